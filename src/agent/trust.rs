//! TLS to the upstreams, trusting Mozilla's roots (webpki-roots) and, in addition, the PEM
//! certificates in UPSTREAM_CA_FILE and SSL_CERT_FILE: a developer behind a TLS-inspecting
//! corporate proxy, or a self-hosted upstream with its own CA, can be reached. ureq's rustls
//! connector trusts either its built-in roots or a given list, never both, so this is the same
//! connector (a rustls client over the chained transport) with a trust store of keyrelay's.
//! The store is swapped whole on SIGHUP; connections already open keep theirs.

use std::io::{Read, Write};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use ureq::Error;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
    TransportAdapter,
};

/// Where the extra trusted certificates come from, as the variables name them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustFiles {
    /// UPSTREAM_CA_FILE.
    pub upstream_ca_file: Option<String>,
    /// SSL_CERT_FILE, as the ecosystem's tools read it.
    pub ssl_cert_file: Option<String>,
}

/// The rustls client configuration every new upstream TLS connection uses.
#[derive(Debug, Clone)]
pub struct Trust {
    config: Arc<RwLock<Arc<ClientConfig>>>,
}

impl Trust {
    /// Mozilla's roots plus the certificates in `files`; the error names the variable and
    /// the file.
    pub fn new(files: &TrustFiles) -> Result<(Trust, usize), String> {
        let (config, extra) = client_config(files)?;
        Ok((
            Trust {
                config: Arc::new(RwLock::new(Arc::new(config))),
            },
            extra,
        ))
    }

    /// Reads `files` again and uses them for new connections; on an error the store in use
    /// stays. Returns how many extra certificates are trusted now.
    pub fn reload(&self, files: &TrustFiles) -> Result<usize, String> {
        let (config, extra) = client_config(files)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(extra)
    }

    fn current(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The PEM certificates in the file a variable names.
fn certificates(var: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{var}: cannot read {path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{var}: {path} is not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{var}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

fn client_config(files: &TrustFiles) -> Result<(ClientConfig, usize), String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut extra = 0;
    for (var, path) in [
        ("UPSTREAM_CA_FILE", &files.upstream_ca_file),
        ("SSL_CERT_FILE", &files.ssl_cert_file),
    ] {
        let Some(path) = path else { continue };
        let (added, ignored) = roots.add_parsable_certificates(certificates(var, path)?);
        if added == 0 {
            return Err(format!(
                "{var}: none of the {ignored} certificate(s) in {path} can be a trust anchor"
            ));
        }
        extra += added;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((config, extra))
}

/// Wraps a chained connection to an https upstream in TLS with the current trust store.
#[derive(Debug)]
pub(super) struct TrustConnector {
    pub(super) trust: Trust,
}

impl<In: Transport> Connector<In> for TrustConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details
            .uri
            .authority()
            .map(|a| a.host().trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or_default();
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| Error::Tls("the upstream's host is not a valid TLS server name"))?;
        let mut connection = ClientConnection::new(self.trust.current(), name)?;
        let mut socket = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        // The handshake gets the connect budget again, counted from its start.
        socket.set_timeout(details.timeout);
        connection.complete_io(&mut socket).map_err(|e| {
            // rustls's own error (a certificate not trusted, say) rather than a bare I/O one.
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => Error::Rustls(tls.clone()),
                None => Error::Io(e),
            }
        })?;
        Ok(Some(Either::B(TlsTransport {
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            stream: StreamOwned {
                conn: connection,
                sock: socket,
            },
        })))
    }
}

/// One TLS connection to an upstream.
pub(super) struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

/// Names nothing: the buffers hold request heads, keys included.
impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsTransport")
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_refused_with_the_variable_named() {
        let files = TrustFiles {
            upstream_ca_file: Some("/nonexistent/ca.pem".into()),
            ssl_cert_file: None,
        };
        let error = Trust::new(&files).unwrap_err();
        assert!(
            error.starts_with("UPSTREAM_CA_FILE: cannot read /nonexistent/ca.pem"),
            "{error}"
        );
        let dir = std::env::temp_dir().join(format!("keyrelay-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let files = TrustFiles {
            upstream_ca_file: None,
            ssl_cert_file: Some(empty.display().to_string()),
        };
        let error = Trust::new(&files).unwrap_err();
        assert!(error.starts_with("SSL_CERT_FILE:"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(Trust::new(&TrustFiles::default()).unwrap().1, 0);
    }
}
