//! The same proxy on monoio's epoll driver, as used where io_uring is unavailable. This file is
//! its own test process, so forcing the driver here does not affect the other tests.

use std::time::Duration;

use ringmesh_tests::*;

fn legacy() {
    // SAFETY: no other thread reads or writes the environment while this runs: it is the first
    // thing the only test of this process does, before any runtime or proxy thread starts.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("MONOIO_FORCE_LEGACY_DRIVER", "1");
    }
}

#[test]
fn http_on_the_epoll_driver() {
    legacy();
    let up = Upstream::echo();
    let p = TestProxy::simple(up.addr, 2, "    idle_timeout: 1s\n");
    assert_eq!(
        p.metric("ringmesh_io_uring"),
        Some(0.0),
        "the epoll driver is in use"
    );
    let mut c = Client::connect(p.edge());
    for i in 0..50 {
        assert_eq!(
            c.get(&format!("/{i}")).header("x-path"),
            Some(format!("/{i}").as_str())
        );
    }
    std::thread::sleep(Duration::from_millis(600));
    c.send(b"POST /body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    assert_eq!(c.response(false).text(), "abc");
    let body = vec![b'z'; 300_000];
    c.send(
        format!(
            "PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    c.send(&body);
    assert!(c.response(false).body == body);
    assert_eq!(one_shot(p.edge(), b"GET / HTTP/1.1\r\n\r\n").status, 400);
    assert!(
        c.is_closed(Duration::from_secs(5)),
        "the idle timeout also works on epoll"
    );
    assert!(p.proxy.drain());
}
