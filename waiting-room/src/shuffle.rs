//! The auditable pre-queue shuffle.
//!
//! Before the pre-queue opens, the admission controller draws a secret 32-byte seed and publishes
//! its SHA-256 in the room's state (`seed_sha256`). At the on-sale it numbers the fans of the
//! pre-queue 1..P in ascending order of `SHA-256(seed ‖ user_id)` (the seed's 32 bytes followed by
//! the user id in its canonical hyphenated lower-case form), then reveals the seed (`seed`).
//! Anyone can then check the commitment and recompute the order; nobody, the operator included,
//! could aim a fan at the front without the seed being fixed in advance. The order of any subset
//! is the same, so a fan leaving during the opening changes nobody else's relative order.

use common::ids::UserId;
use rand::RngExt as _;
use sha2::{Digest, Sha256};

/// A shuffle seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub [u8; 32]);

impl Seed {
    /// A fresh random seed.
    pub fn random() -> Self {
        Self(rand::rng().random())
    }

    /// Lower-case hex, as stored and revealed.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 {
            return None;
        }
        let mut bytes = [0_u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }

    /// The published commitment: SHA-256 of the seed's bytes, hex.
    pub fn commitment(&self) -> String {
        hex(&Sha256::digest(self.0))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The sort key of one fan.
fn rank(seed: &Seed, user: &UserId) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(seed.0);
    hasher.update(user.to_string().as_bytes());
    hasher.finalize().into()
}

/// The pre-queue in queue order: index 0 gets number 1.
pub fn order(seed: &Seed, users: &[UserId]) -> Vec<UserId> {
    let mut ranked: Vec<([u8; 32], UserId)> = users.iter().map(|user| (rank(seed, user), *user)).collect();
    ranked.sort_unstable();
    ranked.into_iter().map(|(_, user)| user).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_is_a_permutation_reproducible_from_the_seed() {
        let users: Vec<UserId> = (0..500).map(|_| UserId::new()).collect();
        let seed = Seed::random();
        let first = order(&seed, &users);
        assert_eq!(first, order(&seed, &users));
        let mut sorted_in = users.clone();
        sorted_in.sort();
        let mut sorted_out = first.clone();
        sorted_out.sort();
        assert_eq!(sorted_in, sorted_out);
        assert_ne!(first, users, "arrival order is not kept");
        assert_ne!(first, order(&Seed::random(), &users), "another seed, another order");
    }

    #[test]
    fn removing_a_fan_keeps_everybody_elses_relative_order() {
        let users: Vec<UserId> = (0..50).map(|_| UserId::new()).collect();
        let seed = Seed::random();
        let full = order(&seed, &users);
        let without: Vec<UserId> = full.iter().copied().filter(|user| *user != users[7]).collect();
        assert_eq!(
            order(
                &seed,
                &users[..7].iter().chain(&users[8..]).copied().collect::<Vec<_>>()
            ),
            without
        );
    }

    #[test]
    fn seeds_round_trip_through_hex_and_commit_to_themselves() {
        let seed = Seed::random();
        assert_eq!(Seed::from_hex(&seed.to_hex()), Some(seed));
        assert_eq!(seed.commitment().len(), 64);
        assert_ne!(seed.commitment(), Seed::random().commitment());
        assert_eq!(Seed::from_hex("zz"), None);
    }
}
