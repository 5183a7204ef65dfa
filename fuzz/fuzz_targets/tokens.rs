//! Tokens from outside: the edge join token (`<ca hash>.<jwt>`), and ServiceAccount bearer
//! tokens checked by the API.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use kubeedge_core::kubeapi::auth::TokenIssuer;
use kubeedge_core::pki::Token;
use kubeedge_core::store::{self, Store};
use libfuzzer_sys::fuzz_target;

fn issuer() -> &'static (Store, TokenIssuer) {
    static ISSUER: OnceLock<(Store, TokenIssuer)> = OnceLock::new();
    ISSUER.get_or_init(|| {
        let store = Store::open(
            &kubeedge_fuzz::scratch().join("tokens.redb"),
            store::Config::default(),
        )
        .expect("a store");
        let issuer = TokenIssuer::load_or_create(&store).expect("an issuer");
        (store, issuer)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ca = kubeedge_fuzz::ca();
    let now = SystemTime::now();
    if let Ok(token) = Token::parse(text) {
        let _ = token.check_ca(ca.cert_der());
    }
    assert!(ca.verify_token(text, now).is_err() || text.contains('.'));
    let _ = ca.verify_jwt(text, now);
    let (store, issuer) = issuer();
    let _ = issuer.verify(store, text);
});
