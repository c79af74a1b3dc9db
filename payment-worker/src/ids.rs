//! Deterministic ids. A redelivered message, a webhook and a reconciliation that settle the same
//! payment all derive the same command, message and refund ids, so whatever is written or
//! published twice is recognised downstream (the booking-worker deduplicates by command id,
//! consumers by message id, the gateway by the refund's idempotency key).
//!
//! Each id is a UUID v8 whose bits are the SHA-256 of a purpose tag and the inputs.

use common::ids::{CommandId, MessageId, PaymentId, RefundId};
use sha2::{Digest as _, Sha256};
use uuid::{Builder, Uuid};

fn derive(purpose: &str, parts: &[&str]) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(b"floodgate/payment-worker/");
    hash.update(purpose.as_bytes());
    for part in parts {
        // A separator that cannot occur in the parts keeps ("ab", "c") apart from ("a", "bc").
        hash.update([0]);
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Builder::from_custom_bytes(bytes).into_uuid()
}

/// The `ConfirmBooking` command of a succeeded payment.
pub fn confirm_booking(payment: PaymentId) -> CommandId {
    CommandId(derive("confirm-booking", &[&payment.to_string()]))
}

/// The `PaymentFailed` command of a failed payment.
pub fn payment_failed(payment: PaymentId) -> CommandId {
    CommandId(derive("payment-failed", &[&payment.to_string()]))
}

/// The envelope of a message about `payment` of type `kind` (one per payment and type).
pub fn payment_message(payment: PaymentId, kind: &str) -> MessageId {
    MessageId(derive("payment-message", &[&payment.to_string(), kind]))
}

/// The refund of `payment` for `reason`, distinguished by `discriminator` (the cancel command;
/// empty for the one full refund of a rejected confirmation).
pub fn refund(payment: PaymentId, reason: &str, discriminator: &str) -> RefundId {
    RefundId(derive("refund", &[&payment.to_string(), reason, discriminator]))
}

/// The gateway `Idempotency-Key` of a refund.
pub fn refund_idempotency_key(refund: RefundId) -> String {
    format!("floodgate-refund-{refund}")
}

/// The `RecordRefund` command of a refund.
pub fn record_refund(refund: RefundId) -> CommandId {
    CommandId(derive("record-refund", &[&refund.to_string()]))
}

/// The envelope of a message about `refund` of type `kind`.
pub fn refund_message(refund: RefundId, kind: &str) -> MessageId {
    MessageId(derive("refund-message", &[&refund.to_string(), kind]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_input_and_distinct_across_purposes() {
        let payment = PaymentId::new();
        assert_eq!(confirm_booking(payment), confirm_booking(payment));
        assert_ne!(confirm_booking(payment).0, payment_failed(payment).0);
        assert_ne!(confirm_booking(payment), confirm_booking(PaymentId::new()));
        assert_eq!(confirm_booking(payment).0.get_version_num(), 8);
        assert_ne!(refund(payment, "cancelled", "a"), refund(payment, "cancelled", "b"));
        assert_eq!(
            refund(payment, "confirm_rejected", ""),
            refund(payment, "confirm_rejected", "")
        );
    }
}
