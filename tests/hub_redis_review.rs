//! An independent review of the Redis broker: hostile and racing cases against real
//! `redis-server` processes (see `tests/support/redis.rs`). Same harness rules as
//! `tests/hub_redis.rs`: ignored with the reason without the `redis` feature or the binary,
//! required in CI.

mod support;

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    #[cfg(feature = "redis")]
    let trials = review::trials();
    #[cfg(not(feature = "redis"))]
    let trials =
        vec![libtest_mimic::Trial::test("redis_review", || Ok(())).with_ignored_flag(true)];
    libtest_mimic::run(&args, trials).exit();
}

#[cfg(feature = "redis")]
mod review {
    use crate::support::{self, redis::redis_status};

    /// Each test, and whether its peer is there.
    pub fn trials() -> Vec<libtest_mimic::Trial> {
        let status = redis_status();
        let ignore = status.is_err() && !support::peers_required();
        let tests: Vec<(&'static str, fn())> = vec![];
        tests
            .into_iter()
            .map(|(name, test)| {
                let status = status.clone();
                libtest_mimic::Trial::test(name, move || {
                    if let Err(why) = status {
                        return Err(format!("required peer missing: {why}").into());
                    }
                    test();
                    Ok(())
                })
                .with_ignored_flag(ignore)
            })
            .collect()
    }
}
