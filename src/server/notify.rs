//! systemd readiness (the `sd_notify` datagram protocol): `READY=1` once the port accepts
//! connections, `RELOADING=1` then `READY=1` around a SIGHUP reload, `STOPPING=1` when
//! draining starts. One datagram to the socket `$NOTIFY_SOCKET` names (a path, or an abstract
//! name starting with `@`); nothing at all when it is unset.

use std::os::unix::net::UnixDatagram;

use log::debug;

/// Sends `state` (e.g. `READY=1`) to the service manager, if one is listening.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let name = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str());
        match name.strip_prefix(b"@") {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &target),
        }
    });
    if let Err(err) = sent {
        debug!("NOTIFY_SOCKET: cannot send {state:?}: {err}");
    }
}

/// `RELOADING=1` with the monotonic time systemd asks for (`MONOTONIC_USEC`).
pub fn reloading() -> String {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    format!("RELOADING=1\nMONOTONIC_USEC={usec}")
}
