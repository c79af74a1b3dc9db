//! Ticket codes: what the QR image carries and the door scans.
//!
//! A code is 128 random bits (base64url), so it cannot be guessed. The booking-worker stores it
//! with a signature (HMAC-SHA256 under the server's ticket key over the code, show and seat), and
//! check-in verifies that signature in constant time: a row that was not issued with the key
//! (a forged or tampered ticket) never admits anyone, even if it reached the database.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use rand::RngExt as _;
use sha2::Sha256;

use crate::ids::{SeatId, ShowId};

/// Signs and verifies ticket codes with the server's ticket key (`TICKET_SIGNING_KEY`).
#[derive(Clone)]
pub struct TicketSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketSigner(..)")
    }
}

/// A freshly issued code with its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCode {
    /// The unguessable code (22 base64url characters).
    pub code: String,
    /// Hex HMAC-SHA256 over the code, show and seat.
    pub signature: String,
}

impl TicketSigner {
    /// A signer with `key` (at least 32 bytes is advisable).
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self {
            key: key.as_ref().to_vec(),
        }
    }

    /// A new random code for `seat` of `show`, signed.
    pub fn issue(&self, show: ShowId, seat: SeatId) -> IssuedCode {
        let bytes: [u8; 16] = rand::rng().random();
        let code = URL_SAFE_NO_PAD.encode(bytes);
        let signature = hex(&self.mac(&code, show, seat).finalize().into_bytes());
        IssuedCode { code, signature }
    }

    /// Whether `signature` is this key's signature of `code` for `seat` of `show` (constant time).
    pub fn verify(&self, code: &str, show: ShowId, seat: SeatId, signature: &str) -> bool {
        let Some(bytes) = unhex(signature) else {
            return false;
        };
        self.mac(code, show, seat).verify_slice(&bytes).is_ok()
    }

    fn mac(&self, code: &str, show: ShowId, seat: SeatId) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(code.as_bytes());
        mac.update(b"|");
        mac.update(show.to_string().as_bytes());
        mac.update(b"|");
        mac.update(seat.to_string().as_bytes());
        mac
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_code_verifies_for_its_seat_only() {
        let signer = TicketSigner::new("a ticket key of enough length!!!");
        let (show, seat) = (ShowId::new(), SeatId::new());
        let issued = signer.issue(show, seat);
        assert_eq!(issued.code.len(), 22);
        assert!(signer.verify(&issued.code, show, seat, &issued.signature));
        assert!(!signer.verify(&issued.code, show, SeatId::new(), &issued.signature));
        assert!(!signer.verify(&issued.code, ShowId::new(), seat, &issued.signature));
        assert!(!signer.verify("forged", show, seat, &issued.signature));
        assert!(!signer.verify(&issued.code, show, seat, "zz"));
        assert!(!signer.verify(&issued.code, show, seat, &issued.signature[..10]));
        let other = TicketSigner::new("another key of the same length!!");
        assert!(!other.verify(&issued.code, show, seat, &issued.signature));
    }

    #[test]
    fn codes_do_not_repeat() {
        let signer = TicketSigner::new("k");
        let (show, seat) = (ShowId::new(), SeatId::new());
        assert_ne!(signer.issue(show, seat).code, signer.issue(show, seat).code);
    }
}
