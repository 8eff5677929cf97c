//! The control API: HTTP/1.1 (a small subset) with JSON bodies on a unix socket, so
//! `curl --unix-socket SOCK http://localhost/vm` works. Documented in `microvm/API.md`.
//!
//! One thread (`vmm-api`) serves one connection at a time; every response closes the
//! connection. Requests are bounded (8 KiB of headers, 64 KiB of body, one descriptor passed
//! with SCM_RIGHTS, which only an attach uses: [`fds`]). [`http`] reads a
//! request, [`routes`] tells what it asks for (nothing of the VM is touched until then), the
//! server executes it. The JSON bodies are the types of `husk_config::api`, which also has the
//! client.

mod fds;
mod http;
pub(crate) mod routes;
mod server;

pub use routes::error_chain;
pub use server::{ApiDevices, ApiServer, VmInfo};

/// Entry point of the `api_request` fuzz target (and of the bounded pseudo-random test
/// below): `data` as the bytes a client sends, read by the request parser in pieces whose
/// sizes the input also picks, then routed (path, method, attach body).
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    /// Hands out the input in pieces of 1 to 64 bytes (the first byte picks the pattern).
    struct Pieces<'a> {
        data: &'a [u8],
        step: usize,
    }
    impl std::io::Read for Pieces<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.data.len().min(buf.len()).min(self.step);
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            self.step = self.step % 64 + 1;
            Ok(n)
        }
    }
    let step = usize::from(data.first().copied().unwrap_or(0) % 64) + 1;
    let mut reader = Pieces { data: data.get(1..).unwrap_or_default(), step };
    if let Ok(req) = http::read_request(&mut reader) {
        assert!(req.body.len() <= http::MAX_BODY);
        if let Err(r) = routes::route(&req) {
            assert!((400..500).contains(&r.status) && !r.message.is_empty());
        }
    }
}

/// Starting the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket could not be bound.
    #[error("cannot listen on API socket {0:?}")]
    Bind(std::path::PathBuf, #[source] std::io::Error),
    /// The thread could not be spawned.
    #[error("cannot spawn the API thread")]
    Spawn(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    /// The fuzz entry point on mutations of real requests (bounded, deterministic): no input
    /// may panic it, and the valid ones must route.
    #[test]
    fn fuzz_entry_survives_mutated_requests() {
        let seeds: [&[u8]; 4] = [
            b"\x05PUT /vm/disks/slot0 HTTP/1.1\r\nContent-Length: 29\r\n\r\n{\"path\":\"/i.img\",\"id\":\"c-1\"}\n",
            b"\x3fDELETE /vm/disks/slot1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"\x00GET /vm/disks HTTP/1.1\r\nHost: localhost\r\n\r\n",
            b"\x10PUT /vm/pause?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        ];
        for seed in seeds {
            let req = super::http::read_request(&mut &seed[1..]).unwrap();
            assert!(super::routes::route(&req).is_ok(), "{:?}", String::from_utf8_lossy(seed));
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let mut input = seeds[i % seeds.len()].to_vec();
            for _ in 0..(next() % 6) {
                let at = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[at] = next() as u8,
                    1 => {
                        input.remove(at);
                    }
                    _ => input.insert(at, b"\r\n{}\":/0123456789"[(next() % 17) as usize]),
                }
                if input.is_empty() {
                    break;
                }
            }
            super::fuzz_request(&input);
        }
    }
}
