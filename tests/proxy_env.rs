//! The proxy from the environment (its own test binary: it sets process-wide variables).

use syncws::{Proxy, ProxyKind};

#[test]
fn the_usual_variables_choose_the_proxy_and_no_proxy_excludes() {
    // SAFETY: this binary runs this one test; nothing else reads the environment meanwhile.
    unsafe {
        for v in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
            "NO_PROXY",
            "no_proxy",
        ] {
            std::env::remove_var(v);
        }
    }
    assert_eq!(Proxy::from_env(true, "venue.example").unwrap(), None);
    unsafe {
        std::env::set_var("https_proxy", "http://u:p@proxy.corp:3128");
        std::env::set_var("ALL_PROXY", "socks5://fallback:1080");
        std::env::set_var("NO_PROXY", "localhost,.internal");
    }
    let tls = Proxy::from_env(true, "venue.example").unwrap().unwrap();
    assert_eq!(
        (tls.kind(), tls.address()),
        (ProxyKind::Http, "proxy.corp:3128".to_string())
    );
    let plain = Proxy::from_env(false, "venue.example").unwrap().unwrap();
    assert_eq!(
        (plain.kind(), plain.address()),
        (ProxyKind::Socks5, "fallback:1080".to_string())
    );
    assert_eq!(Proxy::from_env(true, "md.internal").unwrap(), None);
    assert_eq!(Proxy::from_env(false, "localhost").unwrap(), None);
    unsafe { std::env::set_var("HTTPS_PROXY", "gopher://nope") };
    assert!(Proxy::from_env(true, "venue.example").is_err());
}
