//! The rest of a booking's life after the hold: payment, confirmation with tickets, failed
//! charges, cancellation and refund, promo codes, and the waitlist of a sold-out show.
//!
//! Decisions where the spec is silent:
//! - Starting a payment extends the hold by the worker's payment grace period
//!   (`BOOKING_PAYMENT_GRACE_SECONDS`), so a charge that takes a while does not race the expiry.
//! - A failed charge puts the booking back to `held` with the time it has left (including the
//!   grace); if none is left it expires at once.
//! - A charge that succeeds for a booking that is no longer payable (expired, released, or
//!   already paid by another payment) is answered with `booking.confirm_rejected`, which the
//!   payment-worker refunds in full. The seats stay with whoever holds them now.
//! - A promo-code use is taken when the hold is placed and given back when the hold ends
//!   unpaid (lapsed or released), so abandoned carts do not burn a limited code. A cancelled
//!   sale keeps its use.
//! - Waitlist offers go strictly in arrival order: when seats are back on sale the first fan in
//!   line gets a best-available hold of the quantity asked for; if that many are not available
//!   yet, nobody behind them jumps ahead.

use common::{
    contracts::{
        BookingCancelled, BookingConfirmRejected, BookingConfirmed, BookingPaymentFailed, BookingPaymentPending,
        CancelBooking, ChargePayment, ConfirmBooking, HeldSeat, HoldExpired, JoinWaitlist, Message, PaymentFailed,
        RecordRefund, RejectionCode, StartPayment, WaitlistOffered,
    },
    ids::{BookingId, CommandId, PaymentId, PromoCodeId, SeatId, TicketId, UserId, WaitlistEntryId},
};
use time::OffsetDateTime;

use super::{
    Batch, BookingChange, BookingStatus, LoadedWaitlistEntry, Outcome, OutgoingEvent, Processed, Route, SeatStatus,
    ShowState,
};
use crate::allocator::Request;

/// A payment row the batch creates (status `processing`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewPayment {
    /// The payment (chosen by ingress, so the fan can poll it at once).
    pub payment_id: PaymentId,
    /// The booking it pays.
    pub booking_id: BookingId,
    /// The booking's total.
    pub amount_cents: i64,
    /// The gateway `Idempotency-Key` of every attempt of this charge.
    pub idempotency_key: String,
    /// The fan's card token.
    pub card_token: String,
}

/// A ticket the batch issues.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTicket {
    /// The ticket.
    pub ticket_id: TicketId,
    /// Its booking.
    pub booking_id: BookingId,
    /// Its seat.
    pub seat_id: SeatId,
    /// The unguessable code in the QR image.
    pub code: String,
    /// The server's signature of code, show and seat.
    pub signature: String,
}

/// A waitlist entry the batch creates.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWaitlistEntry {
    /// The entry.
    pub waitlist_entry_id: WaitlistEntryId,
    /// The fan.
    pub user_id: UserId,
    /// How many seats.
    pub quantity: u32,
}

/// A waitlist entry's new state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaitlistChange {
    /// `offered`, `fulfilled`, `expired` or `cancelled`.
    pub status: &'static str,
    /// The booking of the offer.
    pub booking_id: Option<BookingId>,
}

impl WaitlistChange {
    pub(super) fn new(status: &'static str, booking_id: Option<BookingId>) -> Self {
        Self { status, booking_id }
    }
}

/// A promo code as the database has it when a batch starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Promo {
    /// The code's row.
    pub promo_code_id: PromoCodeId,
    /// A percentage off, or
    pub percent_off: Option<i32>,
    /// an amount off.
    pub amount_off_cents: Option<i64>,
    /// `max_uses - used_count` at the start of the batch.
    pub remaining: i32,
    /// The code works until then.
    pub valid_until: OffsetDateTime,
}

impl Promo {
    /// The discount on `subtotal_cents`: never more than the subtotal, rounded down.
    pub fn discount(&self, subtotal_cents: i64) -> i64 {
        let off = match (self.percent_off, self.amount_off_cents) {
            (Some(percent), _) => subtotal_cents * i64::from(percent) / 100,
            (None, Some(amount)) => amount,
            (None, None) => 0,
        };
        off.clamp(0, subtotal_cents)
    }
}

impl ShowState {
    /// The promo code a hold request names, if it can be used now: it exists for this show (or
    /// all shows), is still valid and has a use left counting this batch's uses.
    pub(super) fn promo_for(
        &self,
        batch: &Batch,
        code: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<Promo>, RejectionCode> {
        let Some(code) = code else {
            return Ok(None);
        };
        let promo = batch
            .promos
            .get(&code.trim().to_uppercase())
            .ok_or(RejectionCode::InvalidPromoCode)?;
        let used_here = batch.promo_uses.get(&promo.promo_code_id).copied().unwrap_or(0);
        if promo.valid_until <= now || promo.remaining - used_here <= 0 {
            return Err(RejectionCode::InvalidPromoCode);
        }
        Ok(Some(promo.clone()))
    }

    /// Starts paying a held booking: `payment_pending`, the hold extended by the grace period,
    /// a payment row, and a `ChargePayment` for the payment-workers.
    pub fn start_payment(
        &mut self,
        batch: &mut Batch,
        command: &StartPayment,
        already_done: bool,
        now: OffsetDateTime,
    ) -> Outcome {
        if already_done || !batch.seen.insert(command.command_id) {
            return Outcome::Duplicate;
        }
        let refusal = match self.bookings.get(&command.booking_id) {
            None => Some("hold_expired"),
            Some(booking) if booking.user != command.user_id => Some("booking_not_found"),
            Some(booking) => match booking.status {
                BookingStatus::PaymentPending => Some("payment_in_progress"),
                BookingStatus::Confirmed => Some("already_paid"),
                BookingStatus::Held if booking.expires_at <= now => Some("hold_expired"),
                _ => None,
            },
        };
        let outcome = match refusal {
            Some(code) => Outcome::Refused(code),
            None => {
                let (total_cents, expires_at) = {
                    let booking = &self.bookings[&command.booking_id];
                    (booking.total_cents, booking.expires_at + self.terms.payment_grace)
                };
                self.change(batch, command.booking_id, BookingStatus::PaymentPending, expires_at);
                if let Some(booking) = self.bookings.get_mut(&command.booking_id) {
                    booking.payment = Some(command.payment_id);
                }
                let idempotency_key = format!("charge-{}", command.payment_id);
                batch.payments.push(NewPayment {
                    payment_id: command.payment_id,
                    booking_id: command.booking_id,
                    amount_cents: total_cents,
                    idempotency_key: idempotency_key.clone(),
                    card_token: command.card_token.clone(),
                });
                self.emit(
                    batch,
                    BookingPaymentPending {
                        user_id: command.user_id,
                        booking_id: command.booking_id,
                        payment_id: command.payment_id,
                        expires_at,
                    },
                );
                self.send_to_payments(
                    batch,
                    ChargePayment {
                        payment_id: command.payment_id,
                        booking_id: command.booking_id,
                        show_id: self.terms.show_id,
                        user_id: command.user_id,
                        amount_cents: total_cents,
                        currency: self.terms.currency.clone(),
                        card_token: command.card_token.clone(),
                        idempotency_key,
                    },
                );
                Outcome::PaymentStarted
            }
        };
        record(
            batch,
            command.command_id,
            StartPayment::TYPE,
            outcome,
            command.booking_id,
        );
        outcome
    }

    /// Confirms a paid booking: its seats are sold and its tickets issued. A booking that can no
    /// longer be confirmed is answered with `booking.confirm_rejected` (refunded).
    pub fn confirm(
        &mut self,
        batch: &mut Batch,
        command: &ConfirmBooking,
        already_done: bool,
        now: OffsetDateTime,
    ) -> Outcome {
        if already_done || !batch.seen.insert(command.command_id) {
            return Outcome::Duplicate;
        }
        let booking_id = command.booking_id;
        // A hold that lapsed is expired first, even if the sweep has not reached it yet.
        if let Some(booking) = self.bookings.get(&booking_id)
            && booking.status.holds_seats()
            && booking.expires_at <= now
        {
            let user_id = booking.user;
            self.end(batch, booking_id, BookingStatus::Expired);
            self.emit(batch, HoldExpired { user_id, booking_id });
        }
        let payable = self.bookings.get(&booking_id).map(|booking| {
            let ours = booking.payment.is_none_or(|payment| payment == command.payment_id);
            (booking.status, ours)
        });
        let outcome = match payable {
            Some((BookingStatus::Confirmed, true)) => Outcome::Duplicate,
            Some((BookingStatus::Held | BookingStatus::PaymentPending, true)) => {
                self.sell(batch, booking_id, command.payment_id);
                Outcome::Confirmed
            }
            other => {
                let booking_status = match other {
                    Some((status, _)) => status.as_str(),
                    None => "not_live",
                };
                self.emit(
                    batch,
                    BookingConfirmRejected {
                        user_id: command.user_id,
                        booking_id,
                        payment_id: command.payment_id,
                        booking_status: booking_status.to_owned(),
                    },
                );
                Outcome::ConfirmRejected
            }
        };
        record(batch, command.command_id, ConfirmBooking::TYPE, outcome, booking_id);
        outcome
    }

    /// Sells a live booking's seats and issues one ticket per seat.
    fn sell(&mut self, batch: &mut Batch, booking_id: BookingId, payment_id: PaymentId) {
        let Some(booking) = self.bookings.get(&booking_id) else {
            return;
        };
        let (user_id, indices, total_cents, expires_at, entry) = (
            booking.user,
            booking.seats.clone(),
            booking.total_cents,
            booking.expires_at,
            booking.waitlist_entry,
        );
        self.change(batch, booking_id, BookingStatus::Confirmed, expires_at);
        self.expiries.remove(&(expires_at, booking_id));
        if let Some(booking) = self.bookings.get_mut(&booking_id) {
            booking.payment = Some(payment_id);
        }
        let mut seats = Vec::with_capacity(indices.len());
        let mut ticket_ids = Vec::with_capacity(indices.len());
        for index in &indices {
            let seat = &mut self.seats[*index as usize];
            seat.status = SeatStatus::Sold;
            batch.changed_seats.insert(*index);
            let issued = self.terms.ticket_signer.issue(self.terms.show_id, seat.seat_id);
            let ticket_id = TicketId::new();
            batch.tickets.push(super::NewTicket {
                ticket_id,
                booking_id,
                seat_id: seat.seat_id,
                code: issued.code,
                signature: issued.signature,
            });
            ticket_ids.push(ticket_id);
            seats.push(HeldSeat {
                seat_id: seat.seat_id,
                index: *index,
                tier: self.tiers[usize::from(seat.tier)].clone(),
                price_cents: seat.price_cents,
            });
        }
        let count = indices.len() as u32;
        self.counts.held -= count;
        self.counts.sold += count;
        if let Some(entry) = entry {
            batch
                .waitlist_changes
                .insert(entry, WaitlistChange::new("fulfilled", Some(booking_id)));
        }
        self.emit(
            batch,
            BookingConfirmed {
                user_id,
                booking_id,
                payment_id,
                seats,
                ticket_ids,
                total_cents,
                currency: self.terms.currency.clone(),
            },
        );
    }

    /// A charge failed: the booking is `held` again while its time lasts, so the fan can pay
    /// with another card.
    pub fn payment_failed(
        &mut self,
        batch: &mut Batch,
        command: &PaymentFailed,
        already_done: bool,
        now: OffsetDateTime,
    ) -> Outcome {
        if already_done || !batch.seen.insert(command.command_id) {
            return Outcome::Duplicate;
        }
        let pending = self.bookings.get(&command.booking_id).filter(|booking| {
            booking.status == BookingStatus::PaymentPending && booking.payment == Some(command.payment_id)
        });
        let outcome = match pending.map(|booking| (booking.user, booking.expires_at)) {
            None => Outcome::Duplicate,
            Some((user_id, expires_at)) => {
                let status = if expires_at > now {
                    self.change(batch, command.booking_id, BookingStatus::Held, expires_at);
                    if let Some(booking) = self.bookings.get_mut(&command.booking_id) {
                        booking.payment = None;
                    }
                    BookingStatus::Held
                } else {
                    self.end(batch, command.booking_id, BookingStatus::Expired);
                    self.emit(
                        batch,
                        HoldExpired {
                            user_id,
                            booking_id: command.booking_id,
                        },
                    );
                    BookingStatus::Expired
                };
                self.emit(
                    batch,
                    BookingPaymentFailed {
                        user_id,
                        booking_id: command.booking_id,
                        payment_id: command.payment_id,
                        code: command.code.clone(),
                        status: status.as_str().to_owned(),
                    },
                );
                Outcome::PaymentFailed
            }
        };
        record(
            batch,
            command.command_id,
            PaymentFailed::TYPE,
            outcome,
            command.booking_id,
        );
        outcome
    }

    /// Cancels the fan's confirmed booking when the show's policy allows it (until the cut-off
    /// before the start): the seats go back on sale, the tickets are void, and the payment is
    /// refunded in full by the payment-worker.
    pub fn cancel(
        &mut self,
        batch: &mut Batch,
        command: &CancelBooking,
        already_done: bool,
        now: OffsetDateTime,
    ) -> Outcome {
        if already_done || !batch.seen.insert(command.command_id) {
            return Outcome::Duplicate;
        }
        let in_time = now < self.terms.starts_at - self.terms.cancel_cutoff;
        let cancellable = self.bookings.get(&command.booking_id).and_then(|booking| {
            let payment = booking.payment?;
            (booking.user == command.user_id && booking.status == BookingStatus::Confirmed && in_time)
                .then_some((payment, booking.total_cents))
        });
        let outcome = match cancellable {
            None => Outcome::Refused("not_cancellable"),
            Some((payment_id, refund_cents)) => {
                self.end(batch, command.booking_id, BookingStatus::Cancelled);
                batch.voided.push(command.booking_id);
                self.emit(
                    batch,
                    BookingCancelled {
                        command_id: command.command_id,
                        user_id: command.user_id,
                        booking_id: command.booking_id,
                        payment_id,
                        refund_cents,
                        currency: self.terms.currency.clone(),
                    },
                );
                Outcome::Cancelled
            }
        };
        record(
            batch,
            command.command_id,
            CancelBooking::TYPE,
            outcome,
            command.booking_id,
        );
        outcome
    }

    /// A cancelled booking's refund went through: `cancelled` becomes `refunded`.
    pub fn record_refund(&mut self, batch: &mut Batch, command: &RecordRefund, already_done: bool) -> Outcome {
        if already_done || !batch.seen.insert(command.command_id) {
            return Outcome::Duplicate;
        }
        batch.refunded.push(command.booking_id);
        record(
            batch,
            command.command_id,
            RecordRefund::TYPE,
            Outcome::Refunded,
            command.booking_id,
        );
        Outcome::Refunded
    }

    /// Puts a fan on the waitlist (once: a fan already waiting or holding an offer is refused).
    pub fn join_waitlist(&mut self, batch: &mut Batch, command: &JoinWaitlist, already_done: bool) -> Outcome {
        if already_done || !batch.seen.insert(command.command_id) {
            return Outcome::Duplicate;
        }
        let waiting = self.waitlist.iter().any(|entry| entry.user_id == command.user_id)
            || self
                .bookings
                .values()
                .any(|booking| booking.user == command.user_id && booking.waitlist_entry.is_some());
        let outcome = if waiting {
            Outcome::Refused("already_waitlisted")
        } else if command.quantity == 0 || command.quantity > self.terms.max_tickets_per_user {
            Outcome::Refused("limit_exceeded")
        } else {
            self.waitlist.push_back(LoadedWaitlistEntry {
                waitlist_entry_id: command.waitlist_entry_id,
                user_id: command.user_id,
                quantity: command.quantity,
            });
            batch.waitlist_new.push(NewWaitlistEntry {
                waitlist_entry_id: command.waitlist_entry_id,
                user_id: command.user_id,
                quantity: command.quantity,
            });
            Outcome::Waitlisted
        };
        batch.processed.push(Processed {
            command_id: command.command_id,
            command_type: JoinWaitlist::TYPE,
            result: result_json(
                outcome,
                serde_json::json!({ "waitlist_entry_id": command.waitlist_entry_id }),
            ),
        });
        outcome
    }

    /// Offers seats that are back on sale to the waitlist, first come first served; returns how
    /// many offers were made.
    pub fn offer_waitlist(&mut self, batch: &mut Batch, now: OffsetDateTime) -> usize {
        let mut offers = 0;
        while self.counts.available > 0
            && let Some(entry) = self.waitlist.front().cloned()
        {
            let owned = self.user_seats.get(&entry.user_id).copied().unwrap_or(0);
            if entry.quantity > self.terms.max_tickets_per_user.saturating_sub(owned) {
                // The fan bought seats since joining: the entry cannot be honoured any more.
                self.waitlist.pop_front();
                batch
                    .waitlist_changes
                    .insert(entry.waitlist_entry_id, WaitlistChange::new("cancelled", None));
                continue;
            }
            let Some(indices) = self.inventory.best_available(Request {
                quantity: entry.quantity as usize,
                tier: None,
                adjacent: false,
            }) else {
                break;
            };
            self.waitlist.pop_front();
            let command_id = CommandId(entry.waitlist_entry_id.0);
            let placed = self.place(
                batch,
                entry.user_id,
                command_id,
                &indices,
                None,
                Some(entry.waitlist_entry_id),
                now,
            );
            batch.waitlist_changes.insert(
                entry.waitlist_entry_id,
                WaitlistChange::new("offered", Some(placed.booking_id)),
            );
            self.emit(
                batch,
                WaitlistOffered {
                    user_id: entry.user_id,
                    waitlist_entry_id: entry.waitlist_entry_id,
                    booking_id: placed.booking_id,
                    seats: placed.seats,
                    total_cents: placed.total_cents,
                    currency: self.terms.currency.clone(),
                    expires_at: placed.expires_at,
                },
            );
            offers += 1;
        }
        offers
    }

    /// Moves a live booking to `status` (not ending it), in memory and in the batch.
    fn change(&mut self, batch: &mut Batch, booking_id: BookingId, status: BookingStatus, expires_at: OffsetDateTime) {
        let Some(booking) = self.bookings.get_mut(&booking_id) else {
            return;
        };
        self.expiries.remove(&(booking.expires_at, booking_id));
        booking.status = status;
        booking.expires_at = expires_at;
        if status.holds_seats() {
            self.expiries.insert((expires_at, booking_id));
        }
        match batch.created_here.get(&booking_id) {
            Some(position) => {
                let created = &mut batch.new_bookings[*position];
                created.status = status;
                created.expires_at = expires_at;
            }
            None => {
                batch.changed.insert(booking_id, BookingChange { status, expires_at });
            }
        }
    }

    /// Queues a command for the payment-workers (through the outbox, like an event).
    fn send_to_payments<T: Message>(&self, batch: &mut Batch, payload: T) {
        let envelope = common::contracts::Envelope::new(Some(self.terms.show_id), payload);
        batch.events.push(OutgoingEvent {
            message_id: envelope.message_id,
            exchange: Route::Payments,
            routing_key: common::mq::PAYMENTS_ROUTING_KEY.to_owned(),
            kind: T::TYPE,
            body: serde_json::to_value(&envelope).expect("contracts always serialise"),
        });
    }
}

/// Records a command's outcome in `processed_command` (the fan's answer for a refused one).
fn record(batch: &mut Batch, command_id: CommandId, command_type: &'static str, outcome: Outcome, booking: BookingId) {
    batch.processed.push(Processed {
        command_id,
        command_type,
        result: result_json(outcome, serde_json::json!({ "booking_id": booking })),
    });
}

fn result_json(outcome: Outcome, mut extra: serde_json::Value) -> serde_json::Value {
    if let Some(fields) = extra.as_object_mut() {
        fields.insert("outcome".into(), outcome.label().into());
        if let Outcome::Refused(code) = outcome {
            fields.insert("code".into(), code.into());
        }
    }
    extra
}
