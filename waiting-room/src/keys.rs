//! Redis key names of one show's waiting room. Every key carries the hash tag `{<show_id>}`, so
//! a show's keys live on one Redis Cluster slot and a Lua script may touch them all.

use common::ids::ShowId;

/// The keys of one show (DESIGN.md "Waiting room (Redis)").
#[derive(Debug, Clone)]
pub struct Keys {
    /// Hash: state, times, rate, cap, seed hash (and the seed once revealed).
    pub cfg: String,
    /// Set: fans who arrived before the on-sale, not yet numbered.
    pub pre: String,
    /// Sorted set: waiting fan → queue number.
    pub queue: String,
    /// Counter: the last number given.
    pub seq: String,
    /// Counter: the highest number the admitter has passed.
    pub serving: String,
    /// Sorted set: admitted fan → session deadline (ms).
    pub active: String,
    /// Hash: admitted fan → queue number (what the admission token binds).
    pub admitted: String,
    /// Sorted set: fan → last sign of life (ms).
    pub heartbeat: String,
    /// Stream: every place the admitter passed, in the order it passed them, stamped with Redis
    /// time (the entry id): the room's fairness record ([`crate::room::AdmissionRecord`]).
    pub admission_log: String,
    /// String: the admitting replica's lease token (the fencing value).
    pub lease: String,
    /// String: the secret shuffle seed, revealed into `cfg` at the on-sale.
    pub seed: String,
    /// Pub/sub channel of serving-number updates.
    pub channel: String,
}

impl Keys {
    /// The keys of `show` under `prefix` (`REDIS_KEY_PREFIX`; tests use a random one).
    pub fn new(prefix: &str, show: ShowId) -> Self {
        let key = |what: &str| format!("{prefix}wr:{{{show}}}:{what}");
        Self {
            cfg: key("cfg"),
            pre: key("pre"),
            queue: key("q"),
            seq: key("seq"),
            serving: key("serving"),
            active: key("active"),
            admitted: key("adm"),
            heartbeat: key("hb"),
            admission_log: key("log"),
            lease: key("lease"),
            seed: key("seed"),
            channel: key("serving"),
        }
    }

    /// Every key (to delete a show's room).
    pub fn all(&self) -> [&str; 11] {
        [
            &self.cfg,
            &self.pre,
            &self.queue,
            &self.seq,
            &self.serving,
            &self.active,
            &self.admitted,
            &self.heartbeat,
            &self.admission_log,
            &self.lease,
            &self.seed,
        ]
    }

    /// The pattern matching every show's channel, for one `PSUBSCRIBE` per ingress instance.
    pub fn channel_pattern(prefix: &str) -> String {
        format!("{prefix}wr:{{*}}:serving")
    }

    /// The show a channel name belongs to.
    pub fn show_of_channel(prefix: &str, channel: &str) -> Option<ShowId> {
        channel
            .strip_prefix(prefix)?
            .strip_prefix("wr:{")?
            .strip_suffix("}:serving")?
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_show_shares_its_hash_tag_and_channels_map_back_to_shows() {
        let show = ShowId::new();
        let keys = Keys::new("p:", show);
        for key in keys.all() {
            assert!(key.starts_with(&format!("p:wr:{{{show}}}:")), "{key}");
        }
        assert_eq!(Keys::show_of_channel("p:", &keys.channel), Some(show));
        assert_eq!(Keys::show_of_channel("p:", "p:wr:{nope}:serving"), None);
        assert_eq!(Keys::show_of_channel("other:", &keys.channel), None);
    }
}
