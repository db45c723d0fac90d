//! Built-in providers: the defaults that let `PROVIDERS=anthropic,groq` work with nothing but
//! keys. Any entry can be overridden with `<NAME>_BASE_URL` and `<NAME>_AUTH`.

use crate::provider::{AuthStyle, ErrorShape};

/// A provider keyrelay knows.
pub struct Known {
    /// Route name.
    pub name: &'static str,
    /// Default base URL.
    pub base_url: &'static str,
    /// Default key injection.
    pub auth: KnownAuth,
    /// Error body shape its SDKs understand.
    pub shape: ErrorShape,
}

/// Key injection of a built-in provider, in static form.
#[derive(Clone, Copy)]
pub enum KnownAuth {
    /// `Authorization: Bearer`.
    Bearer,
    /// A named header.
    Header(&'static str),
}

impl KnownAuth {
    /// The owned form.
    pub fn style(self) -> AuthStyle {
        match self {
            KnownAuth::Bearer => AuthStyle::Bearer,
            KnownAuth::Header(name) => AuthStyle::Header(name.to_string()),
        }
    }
}

/// Providers that are always routed (the older tool's two).
pub const ALWAYS: [&str; 2] = ["openai", "gemini"];

/// Every built-in provider.
pub const KNOWN: &[Known] = &[
    Known {
        name: "openai",
        base_url: "https://api.openai.com",
        auth: KnownAuth::Bearer,
        shape: ErrorShape::OpenAi,
    },
    Known {
        name: "gemini",
        base_url: "https://generativelanguage.googleapis.com",
        auth: KnownAuth::Header("x-goog-api-key"),
        shape: ErrorShape::Gemini,
    },
    Known {
        name: "anthropic",
        base_url: "https://api.anthropic.com",
        auth: KnownAuth::Header("x-api-key"),
        shape: ErrorShape::Anthropic,
    },
    Known {
        name: "groq",
        base_url: "https://api.groq.com/openai",
        auth: KnownAuth::Bearer,
        shape: ErrorShape::OpenAi,
    },
    Known {
        name: "openrouter",
        base_url: "https://openrouter.ai/api",
        auth: KnownAuth::Bearer,
        shape: ErrorShape::OpenAi,
    },
    Known {
        name: "mistral",
        base_url: "https://api.mistral.ai",
        auth: KnownAuth::Bearer,
        shape: ErrorShape::OpenAi,
    },
    Known {
        name: "deepseek",
        base_url: "https://api.deepseek.com",
        auth: KnownAuth::Bearer,
        shape: ErrorShape::OpenAi,
    },
    Known {
        name: "together",
        base_url: "https://api.together.xyz",
        auth: KnownAuth::Bearer,
        shape: ErrorShape::OpenAi,
    },
    Known {
        name: "xai",
        base_url: "https://api.x.ai",
        auth: KnownAuth::Bearer,
        shape: ErrorShape::OpenAi,
    },
    Known {
        name: "fireworks",
        base_url: "https://api.fireworks.ai/inference",
        auth: KnownAuth::Bearer,
        shape: ErrorShape::OpenAi,
    },
];

/// The built-in entry for `name`.
pub fn known(name: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.name == name)
}
