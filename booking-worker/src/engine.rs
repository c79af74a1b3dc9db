//! The in-memory seat engine of one show: the active writer's view of every seat, live booking
//! and fan limit, and the rules that turn commands into changes.
//!
//! Commands are applied strictly in queue order to this state; each one appends what it changed
//! to a [`Batch`], which the worker writes to PostgreSQL in one transaction. The state is ahead of
//! the database until that commit, so when a commit fails the worker throws the state away and
//! reloads it from PostgreSQL before trying the same deliveries again (failures are rare; an undo
//! log would cost every batch).
//!
//! Time is an argument ([`ShowState::hold`], [`ShowState::expire`], ...), never read from the
//! clock, so tests drive hold expiry without sleeping.
//!
//! The payment, cancellation, promo-code and waitlist rules live in the [`flow`] submodule.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use common::{
    contracts::{
        HeldSeat, HoldExpired, HoldPlaced, HoldRejected, HoldReleased, HoldSeats, Message, RejectionCode, ReleaseHold,
        SeatCounts, SeatSelection, ShowInventory, ShowSoldOut,
    },
    ids::{BookingId, CommandId, PaymentId, PromoCodeId, SeatId, ShowId, UserId, WaitlistEntryId},
    tickets::TicketSigner,
};
use time::OffsetDateTime;

mod flow;

pub use flow::{NewPayment, NewTicket, NewWaitlistEntry, Promo, WaitlistChange};

use crate::allocator::{Inventory, Request, SeatSpec};

/// The sale state of one seat (`show_seat.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeatStatus {
    /// On sale.
    Available,
    /// In a live hold (held or payment pending).
    Held,
    /// Paid.
    Sold,
    /// Not for sale.
    Blocked,
}

impl SeatStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "available",
            Self::Held => "held",
            Self::Sold => "sold",
            Self::Blocked => "blocked",
        }
    }

    /// Parses the column value.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "available" => Self::Available,
            "held" => Self::Held,
            "sold" => Self::Sold,
            "blocked" => Self::Blocked,
            _ => return None,
        })
    }
}

/// A booking's state (`booking.status`), as far as the seat engine cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BookingStatus {
    /// Seats held, not paid.
    Held,
    /// A charge is under way; the seats stay held.
    PaymentPending,
    /// Paid; the seats are sold.
    Confirmed,
    /// The fan let go.
    Released,
    /// The hold lapsed.
    Expired,
    /// Paid, then cancelled by the fan; refunded next.
    Cancelled,
}

impl BookingStatus {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::PaymentPending => "payment_pending",
            Self::Confirmed => "confirmed",
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the column value of a live booking (the only ones the engine loads).
    pub fn parse_live(value: &str) -> Option<Self> {
        Some(match value {
            "held" => Self::Held,
            "payment_pending" => Self::PaymentPending,
            "confirmed" => Self::Confirmed,
            _ => return None,
        })
    }

    fn holds_seats(self) -> bool {
        matches!(self, Self::Held | Self::PaymentPending)
    }
}

/// The show's terms, as loaded at activation, and this worker's settings that apply to them.
#[derive(Debug, Clone)]
pub struct ShowTerms {
    /// The show.
    pub show_id: ShowId,
    /// ISO 4217.
    pub currency: String,
    /// How long a hold lasts.
    pub hold_seconds: i64,
    /// Seats a fan may have in live holds and bookings together.
    pub max_tickets_per_user: u32,
    /// Price per tier.
    pub prices: HashMap<String, i64>,
    /// When the show starts.
    pub starts_at: OffsetDateTime,
    /// Cancellations are accepted until this long before the start.
    pub cancel_cutoff: time::Duration,
    /// How much longer a hold lasts once its payment started (the worker's setting).
    pub payment_grace: time::Duration,
    /// Signs ticket codes (the worker's key).
    pub ticket_signer: TicketSigner,
}

/// One seat as loaded from `show_seat` joined with `seat`.
#[derive(Debug, Clone)]
pub struct LoadedSeat {
    /// The seat.
    pub seat_id: SeatId,
    /// Its bit in the availability bitmap.
    pub index: u32,
    /// Identifies its row (section and row label folded together by the loader).
    pub row: u32,
    /// Its number in the row.
    pub number: i32,
    /// Position (stage at the top centre).
    pub x: f32,
    /// Position (grows away from the stage).
    pub y: f32,
    /// Price tier.
    pub tier: String,
    /// Sale state.
    pub status: SeatStatus,
    /// The booking holding or owning it.
    pub booking_id: Option<BookingId>,
}

/// A live booking as loaded at activation.
#[derive(Debug, Clone)]
pub struct LoadedBooking {
    /// The booking.
    pub booking_id: BookingId,
    /// Its fan.
    pub user_id: UserId,
    /// Held, payment pending or confirmed.
    pub status: BookingStatus,
    /// When a hold lapses.
    pub expires_at: OffsetDateTime,
    /// Its seats (indices).
    pub seats: Vec<u32>,
    /// What the fan pays.
    pub total_cents: i64,
    /// Its payment in flight or taken, if any.
    pub payment_id: Option<PaymentId>,
    /// The promo code it used.
    pub promo_code_id: Option<PromoCodeId>,
    /// The waitlist entry it was offered to.
    pub waitlist_entry_id: Option<WaitlistEntryId>,
}

/// A fan still waiting on the waitlist, as loaded at activation (in arrival order).
#[derive(Debug, Clone)]
pub struct LoadedWaitlistEntry {
    /// The entry.
    pub waitlist_entry_id: WaitlistEntryId,
    /// The fan.
    pub user_id: UserId,
    /// How many seats.
    pub quantity: u32,
}

#[derive(Debug, Clone)]
struct Seat {
    seat_id: SeatId,
    tier: u16,
    price_cents: i64,
    status: SeatStatus,
    booking: Option<BookingId>,
}

#[derive(Debug, Clone)]
struct Booking {
    user: UserId,
    status: BookingStatus,
    expires_at: OffsetDateTime,
    seats: Vec<u32>,
    total_cents: i64,
    payment: Option<PaymentId>,
    promo: Option<PromoCodeId>,
    waitlist_entry: Option<WaitlistEntryId>,
}

/// A booking created by this batch, with its final status.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBooking {
    /// The booking.
    pub booking_id: BookingId,
    /// Its fan.
    pub user_id: UserId,
    /// The hold request that created it.
    pub command_id: CommandId,
    /// Held, or released/expired when that happened within the same batch.
    pub status: BookingStatus,
    /// When the hold lapses.
    pub expires_at: OffsetDateTime,
    /// `(seat, price)`.
    pub seats: Vec<(SeatId, i64)>,
    /// Sum of the seat prices.
    pub subtotal_cents: i64,
    /// The promo code's discount.
    pub discount_cents: i64,
    /// What the fan pays.
    pub total_cents: i64,
    /// The promo code applied.
    pub promo_code_id: Option<PromoCodeId>,
    /// The waitlist entry the booking was offered to.
    pub waitlist_entry_id: Option<WaitlistEntryId>,
}

/// The outcome of a hold request, stored in `hold_request`.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldResult {
    /// The command (= hold request id).
    pub command_id: CommandId,
    /// The fan.
    pub user_id: UserId,
    /// The booking when granted.
    pub booking_id: Option<BookingId>,
    /// Why not, when refused.
    pub rejection: Option<RejectionCode>,
    /// The requested seats that were taken, for `seats_unavailable`.
    pub unavailable: Vec<SeatId>,
}

/// A command other than a hold request, recorded in `processed_command`.
#[derive(Debug, Clone, PartialEq)]
pub struct Processed {
    /// The command.
    pub command_id: CommandId,
    /// Its envelope type.
    pub command_type: &'static str,
    /// What happened (`{"outcome": ...}`).
    pub result: serde_json::Value,
}

/// An event to write to the outbox: `(routing key, envelope)`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingEvent {
    /// The envelope's message id.
    pub message_id: common::ids::MessageId,
    /// Which exchange.
    pub exchange: Route,
    /// `<type>.<show_id>` on `events`; the queue's key on `payments`.
    pub routing_key: String,
    /// The envelope's type.
    pub kind: &'static str,
    /// The whole envelope.
    pub body: serde_json::Value,
}

/// Where an outgoing message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The `events` topic exchange (facts).
    Events,
    /// The `payments` exchange (commands to the payment-workers).
    Payments,
}

/// A booking that existed before the batch and changed status without ending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BookingChange {
    /// Its status now.
    pub status: BookingStatus,
    /// When its hold lapses now.
    pub expires_at: OffsetDateTime,
}

/// Everything one batch changed, in the shape the store writes it.
#[derive(Debug, Default)]
pub struct Batch {
    /// Bookings this batch created.
    pub new_bookings: Vec<NewBooking>,
    /// Bookings that existed before the batch and ended in it (released, expired, cancelled):
    /// written after `changed`.
    pub ended: Vec<(BookingId, BookingStatus)>,
    /// Bookings that existed before the batch and changed status (payment pending, held
    /// again, confirmed), with their final state.
    pub changed: HashMap<BookingId, BookingChange>,
    /// Payments created (each queues a charge).
    pub payments: Vec<NewPayment>,
    /// Tickets issued.
    pub tickets: Vec<NewTicket>,
    /// Bookings whose tickets are void (cancelled).
    pub voided: Vec<BookingId>,
    /// Cancelled bookings whose refund went through.
    pub refunded: Vec<BookingId>,
    /// Promo code uses taken (or given back, negative) by this batch.
    pub promo_uses: HashMap<PromoCodeId, i32>,
    /// The promo codes named by this batch's hold requests (by upper-case code), as the
    /// database has them when the batch starts: the worker fills this before applying.
    pub promos: HashMap<String, Promo>,
    /// Waitlist entries created.
    pub waitlist_new: Vec<NewWaitlistEntry>,
    /// Waitlist entries that moved on (offered, fulfilled, expired, cancelled), final state.
    pub waitlist_changes: HashMap<WaitlistEntryId, WaitlistChange>,
    /// Seats whose state changed, by index; their final state is read with [`ShowState::seat_row`].
    pub changed_seats: BTreeSet<u32>,
    /// Hold request outcomes.
    pub hold_results: Vec<HoldResult>,
    /// Other commands applied.
    pub processed: Vec<Processed>,
    /// Events, in the order they happened.
    pub events: Vec<OutgoingEvent>,
    /// Commands seen in this batch (a message duplicated within one batch has one effect).
    seen: HashSet<CommandId>,
    /// Index into `new_bookings` of each booking created here.
    created_here: HashMap<BookingId, usize>,
    /// Whether seats were available when the batch began (to announce a sell-out once).
    had_available: Option<bool>,
}

impl Batch {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.new_bookings.is_empty()
            && self.ended.is_empty()
            && self.changed.is_empty()
            && self.payments.is_empty()
            && self.refunded.is_empty()
            && self.waitlist_new.is_empty()
            && self.waitlist_changes.is_empty()
            && self.changed_seats.is_empty()
            && self.hold_results.is_empty()
            && self.processed.is_empty()
            && self.events.is_empty()
    }
}

/// What applying one command did (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A hold was placed.
    Held,
    /// A hold request was refused.
    Rejected(RejectionCode),
    /// A booking was released.
    Released,
    /// A release that found nothing to release (not the owner's, or no longer held).
    NotReleasable,
    /// A payment started.
    PaymentStarted,
    /// A booking was confirmed (paid, tickets issued).
    Confirmed,
    /// A charge went through for a booking that can no longer be confirmed: it is refunded.
    ConfirmRejected,
    /// A failed charge put the booking back on hold.
    PaymentFailed,
    /// A booking was cancelled.
    Cancelled,
    /// A cancelled booking's refund was recorded.
    Refunded,
    /// A fan joined the waitlist.
    Waitlisted,
    /// The command was refused; the code is stored for the fan.
    Refused(&'static str),
    /// Applied before (a redelivery), or nothing to do: no effect.
    Duplicate,
}

impl Outcome {
    /// A metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Rejected(code) => code.as_str(),
            Self::Released => "released",
            Self::NotReleasable => "not_releasable",
            Self::PaymentStarted => "payment_started",
            Self::Confirmed => "confirmed",
            Self::ConfirmRejected => "confirm_rejected",
            Self::PaymentFailed => "payment_failed",
            Self::Cancelled => "cancelled",
            Self::Refunded => "refunded",
            Self::Waitlisted => "waitlisted",
            Self::Refused(code) => code,
            Self::Duplicate => "duplicate",
        }
    }
}

/// A booking [`ShowState::place`] created.
struct Placed {
    booking_id: BookingId,
    seats: Vec<HeldSeat>,
    subtotal_cents: i64,
    discount_cents: i64,
    total_cents: i64,
    expires_at: OffsetDateTime,
}

/// The active writer's state of one show.
pub struct ShowState {
    terms: ShowTerms,
    tiers: Vec<String>,
    seats: Vec<Seat>,
    index_of: HashMap<SeatId, u32>,
    inventory: Inventory,
    bookings: HashMap<BookingId, Booking>,
    user_seats: HashMap<UserId, u32>,
    expiries: BTreeSet<(OffsetDateTime, BookingId)>,
    counts: SeatCounts,
    waitlist: VecDeque<LoadedWaitlistEntry>,
}

/// The inventory could not be loaded into memory.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Seat indices must be exactly `0..n`.
    #[error("seat indices of the show are not dense (index {0} out of place)")]
    SparseIndices(u32),
    /// A seat's tier has no price in this show.
    #[error("tier {0} has no price")]
    UnpricedTier(String),
    /// A booking names a seat the show does not have.
    #[error("booking {0} holds an unknown seat")]
    UnknownSeat(BookingId),
}

impl ShowState {
    /// Builds the state from what PostgreSQL holds.
    pub fn load(terms: ShowTerms, mut seats: Vec<LoadedSeat>, bookings: Vec<LoadedBooking>) -> Result<Self, LoadError> {
        seats.sort_by_key(|seat| seat.index);
        let mut tiers: Vec<String> = Vec::new();
        let mut tier_of: HashMap<String, u16> = HashMap::new();
        let mut specs = Vec::with_capacity(seats.len());
        let mut state_seats = Vec::with_capacity(seats.len());
        let mut index_of = HashMap::with_capacity(seats.len());
        let mut counts = SeatCounts::default();
        for (position, seat) in seats.iter().enumerate() {
            if seat.index as usize != position {
                return Err(LoadError::SparseIndices(seat.index));
            }
            let tier = *tier_of.entry(seat.tier.clone()).or_insert_with(|| {
                tiers.push(seat.tier.clone());
                u16::try_from(tiers.len() - 1).unwrap_or(u16::MAX)
            });
            let price_cents = *terms
                .prices
                .get(&seat.tier)
                .ok_or_else(|| LoadError::UnpricedTier(seat.tier.clone()))?;
            specs.push(SeatSpec {
                index: seat.index,
                row: seat.row,
                number: seat.number,
                x: seat.x,
                y: seat.y,
                tier,
            });
            match seat.status {
                SeatStatus::Available => counts.available += 1,
                SeatStatus::Held => counts.held += 1,
                SeatStatus::Sold => counts.sold += 1,
                SeatStatus::Blocked => counts.blocked += 1,
            }
            index_of.insert(seat.seat_id, seat.index);
            state_seats.push(Seat {
                seat_id: seat.seat_id,
                tier,
                price_cents,
                status: seat.status,
                booking: seat.booking_id,
            });
        }
        let mut inventory = Inventory::new(&specs);
        let taken: Vec<u32> = seats
            .iter()
            .filter(|seat| seat.status != SeatStatus::Available)
            .map(|seat| seat.index)
            .collect();
        inventory.take(&taken);

        let mut state = Self {
            terms,
            tiers,
            seats: state_seats,
            index_of,
            inventory,
            bookings: HashMap::with_capacity(bookings.len()),
            user_seats: HashMap::new(),
            expiries: BTreeSet::new(),
            counts,
            waitlist: VecDeque::new(),
        };
        for booking in bookings {
            if booking.seats.iter().any(|index| *index as usize >= state.seats.len()) {
                return Err(LoadError::UnknownSeat(booking.booking_id));
            }
            *state.user_seats.entry(booking.user_id).or_default() += booking.seats.len() as u32;
            if booking.status.holds_seats() {
                state.expiries.insert((booking.expires_at, booking.booking_id));
            }
            state.bookings.insert(
                booking.booking_id,
                Booking {
                    user: booking.user_id,
                    status: booking.status,
                    expires_at: booking.expires_at,
                    seats: booking.seats,
                    total_cents: booking.total_cents,
                    payment: booking.payment_id,
                    promo: booking.promo_code_id,
                    waitlist_entry: booking.waitlist_entry_id,
                },
            );
        }
        Ok(state)
    }

    /// Adds the fans still waiting on the waitlist (in arrival order).
    pub fn with_waitlist(mut self, entries: Vec<LoadedWaitlistEntry>) -> Self {
        self.waitlist = entries.into();
        self
    }

    /// The show.
    pub fn show_id(&self) -> ShowId {
        self.terms.show_id
    }

    /// The show's currency.
    pub fn currency(&self) -> &str {
        &self.terms.currency
    }

    /// Seats by status now.
    pub fn counts(&self) -> SeatCounts {
        self.counts
    }

    /// The final state of a changed seat, for the store: `(seat, status, booking)`.
    pub fn seat_row(&self, index: u32) -> (SeatId, SeatStatus, Option<BookingId>) {
        let seat = &self.seats[index as usize];
        (seat.seat_id, seat.status, seat.booking)
    }

    /// The availability bitmap (bit set = available, MSB first), for a snapshot rebuild.
    pub fn bitmap(&self) -> Vec<u8> {
        let mut bitmap = vec![0_u8; self.seats.len().div_ceil(8)];
        for (index, seat) in self.seats.iter().enumerate() {
            if seat.status == SeatStatus::Available {
                bitmap[index / 8] |= 0x80 >> (index % 8);
            }
        }
        bitmap
    }

    /// One status byte per seat (the snapshot's `status` string).
    pub fn statuses(&self) -> Vec<u8> {
        self.seats
            .iter()
            .map(|seat| common::availability::status_byte(seat.status.as_str()))
            .collect()
    }

    /// A seat's status byte (for the snapshot's incremental writes).
    pub fn status_byte(&self, index: u32) -> u8 {
        common::availability::status_byte(self.seats[index as usize].status.as_str())
    }

    /// When the next live hold lapses.
    pub fn next_expiry(&self) -> Option<OffsetDateTime> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Starts a batch.
    pub fn begin(&self) -> Batch {
        Batch {
            had_available: Some(self.counts.available > 0),
            ..Batch::default()
        }
    }

    /// Applies a hold request. `already_done` says the store has its result from an earlier
    /// delivery: then nothing changes and nothing is said again.
    pub fn hold(&mut self, batch: &mut Batch, command: &HoldSeats, already_done: bool, now: OffsetDateTime) -> Outcome {
        if already_done || !batch.seen.insert(command.command_id) {
            return Outcome::Duplicate;
        }
        let chosen = self
            .promo_for(batch, command.promo_code.as_deref(), now)
            .map_err(|code| (code, Vec::new()))
            .and_then(|promo| Ok((promo, self.choose(command)?)));
        match chosen {
            Ok((promo, indices)) => {
                self.place_hold(batch, command, &indices, promo, now);
                Outcome::Held
            }
            Err((code, unavailable)) => {
                batch.hold_results.push(HoldResult {
                    command_id: command.command_id,
                    user_id: command.user_id,
                    booking_id: None,
                    rejection: Some(code),
                    unavailable: unavailable.clone(),
                });
                self.emit(
                    batch,
                    HoldRejected {
                        command_id: command.command_id,
                        user_id: command.user_id,
                        code,
                        unavailable_seat_ids: unavailable,
                    },
                );
                Outcome::Rejected(code)
            }
        }
    }

    /// Picks the seats of a hold request, or says why not.
    fn choose(&self, command: &HoldSeats) -> Result<Vec<u32>, (RejectionCode, Vec<SeatId>)> {
        let owned = self.user_seats.get(&command.user_id).copied().unwrap_or(0);
        let allowance = self.terms.max_tickets_per_user.saturating_sub(owned);
        match &command.selection {
            SeatSelection::Seats { seat_ids } => {
                let mut indices = Vec::with_capacity(seat_ids.len());
                for seat_id in seat_ids {
                    let Some(index) = self.index_of.get(seat_id) else {
                        return Err((RejectionCode::InvalidSeats, Vec::new()));
                    };
                    if indices.contains(index) {
                        return Err((RejectionCode::InvalidSeats, Vec::new()));
                    }
                    indices.push(*index);
                }
                if indices.is_empty() {
                    return Err((RejectionCode::InvalidSeats, Vec::new()));
                }
                if indices.len() > allowance as usize {
                    return Err((RejectionCode::LimitExceeded, Vec::new()));
                }
                let unavailable: Vec<SeatId> = indices
                    .iter()
                    .filter(|index| self.seats[**index as usize].status != SeatStatus::Available)
                    .map(|index| self.seats[*index as usize].seat_id)
                    .collect();
                if unavailable.is_empty() {
                    Ok(indices)
                } else {
                    Err((RejectionCode::SeatsUnavailable, unavailable))
                }
            }
            SeatSelection::BestAvailable {
                quantity,
                tier,
                adjacent,
            } => {
                if *quantity == 0 {
                    return Err((RejectionCode::InvalidSeats, Vec::new()));
                }
                let tier = match tier {
                    None => None,
                    Some(name) => match self.tiers.iter().position(|known| known == name) {
                        Some(position) => Some(u16::try_from(position).unwrap_or(u16::MAX)),
                        None => return Err((RejectionCode::InvalidSeats, Vec::new())),
                    },
                };
                if *quantity > allowance {
                    return Err((RejectionCode::LimitExceeded, Vec::new()));
                }
                self.inventory
                    .best_available(Request {
                        quantity: *quantity as usize,
                        tier,
                        adjacent: *adjacent,
                    })
                    .ok_or((RejectionCode::SeatsUnavailable, Vec::new()))
            }
        }
    }

    fn place_hold(
        &mut self,
        batch: &mut Batch,
        command: &HoldSeats,
        indices: &[u32],
        promo: Option<Promo>,
        now: OffsetDateTime,
    ) {
        let placed = self.place(batch, command.user_id, command.command_id, indices, promo, None, now);
        batch.hold_results.push(HoldResult {
            command_id: command.command_id,
            user_id: command.user_id,
            booking_id: Some(placed.booking_id),
            rejection: None,
            unavailable: Vec::new(),
        });
        self.emit(
            batch,
            HoldPlaced {
                command_id: command.command_id,
                user_id: command.user_id,
                booking_id: placed.booking_id,
                seats: placed.seats,
                subtotal_cents: placed.subtotal_cents,
                discount_cents: placed.discount_cents,
                total_cents: placed.total_cents,
                currency: self.terms.currency.clone(),
                expires_at: placed.expires_at,
            },
        );
    }

    /// Holds `indices` for `user` in a new booking.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &mut self,
        batch: &mut Batch,
        user: UserId,
        command_id: CommandId,
        indices: &[u32],
        promo: Option<Promo>,
        waitlist_entry: Option<WaitlistEntryId>,
        now: OffsetDateTime,
    ) -> Placed {
        let booking_id = BookingId::new();
        let expires_at = now + time::Duration::seconds(self.terms.hold_seconds);
        self.inventory.take(indices);
        let mut seats = Vec::with_capacity(indices.len());
        let mut held = Vec::with_capacity(indices.len());
        for index in indices {
            let seat = &mut self.seats[*index as usize];
            seat.status = SeatStatus::Held;
            seat.booking = Some(booking_id);
            seats.push((seat.seat_id, seat.price_cents));
            held.push(HeldSeat {
                seat_id: seat.seat_id,
                index: *index,
                tier: self.tiers[usize::from(seat.tier)].clone(),
                price_cents: seat.price_cents,
            });
            batch.changed_seats.insert(*index);
        }
        let count = indices.len() as u32;
        self.counts.available -= count;
        self.counts.held += count;
        *self.user_seats.entry(user).or_default() += count;
        self.expiries.insert((expires_at, booking_id));
        let subtotal_cents: i64 = seats.iter().map(|(_, price)| price).sum();
        let discount_cents = promo.as_ref().map_or(0, |promo| promo.discount(subtotal_cents));
        let total_cents = subtotal_cents - discount_cents;
        let promo_code_id = promo.map(|promo| {
            *batch.promo_uses.entry(promo.promo_code_id).or_default() += 1;
            promo.promo_code_id
        });
        self.bookings.insert(
            booking_id,
            Booking {
                user,
                status: BookingStatus::Held,
                expires_at,
                seats: indices.to_vec(),
                total_cents,
                payment: None,
                promo: promo_code_id,
                waitlist_entry,
            },
        );
        batch.created_here.insert(booking_id, batch.new_bookings.len());
        batch.new_bookings.push(NewBooking {
            booking_id,
            user_id: user,
            command_id,
            status: BookingStatus::Held,
            expires_at,
            seats,
            subtotal_cents,
            discount_cents,
            total_cents,
            promo_code_id,
            waitlist_entry_id: waitlist_entry,
        });
        Placed {
            booking_id,
            seats: held,
            subtotal_cents,
            discount_cents,
            total_cents,
            expires_at,
        }
    }

    /// Applies a release: only the owner's held booking is released.
    pub fn release(&mut self, batch: &mut Batch, command: &ReleaseHold, already_done: bool) -> Outcome {
        if already_done || !batch.seen.insert(command.command_id) {
            return Outcome::Duplicate;
        }
        let releasable = self
            .bookings
            .get(&command.booking_id)
            .is_some_and(|booking| booking.user == command.user_id && booking.status == BookingStatus::Held);
        let outcome = if releasable {
            self.end(batch, command.booking_id, BookingStatus::Released);
            self.emit(
                batch,
                HoldReleased {
                    command_id: command.command_id,
                    user_id: command.user_id,
                    booking_id: command.booking_id,
                },
            );
            Outcome::Released
        } else {
            Outcome::NotReleasable
        };
        batch.processed.push(Processed {
            command_id: command.command_id,
            command_type: ReleaseHold::TYPE,
            result: serde_json::json!({ "outcome": outcome.label(), "booking_id": command.booking_id }),
        });
        outcome
    }

    /// Lets every hold that lapsed by `now` go; returns how many.
    pub fn expire(&mut self, batch: &mut Batch, now: OffsetDateTime) -> usize {
        let mut expired = 0;
        while let Some((at, booking_id)) = self.expiries.first().copied() {
            if at > now {
                break;
            }
            self.expiries.pop_first();
            let Some(booking) = self.bookings.get(&booking_id) else {
                continue;
            };
            if !booking.status.holds_seats() || booking.expires_at != at {
                continue;
            }
            let user_id = booking.user;
            self.end(batch, booking_id, BookingStatus::Expired);
            self.emit(batch, HoldExpired { user_id, booking_id });
            expired += 1;
        }
        expired
    }

    /// Ends a live booking (a lapsed or released hold, a cancelled sale): its seats go back on
    /// sale. An unpaid booking gives its promo-code use back; a waitlist offer that lapses ends
    /// its entry.
    fn end(&mut self, batch: &mut Batch, booking_id: BookingId, status: BookingStatus) {
        let Some(booking) = self.bookings.remove(&booking_id) else {
            return;
        };
        self.expiries.remove(&(booking.expires_at, booking_id));
        self.inventory.release(&booking.seats);
        for index in &booking.seats {
            let seat = &mut self.seats[*index as usize];
            match seat.status {
                SeatStatus::Sold => self.counts.sold -= 1,
                _ => self.counts.held -= 1,
            }
            seat.status = SeatStatus::Available;
            seat.booking = None;
            batch.changed_seats.insert(*index);
        }
        let count = booking.seats.len() as u32;
        self.counts.available += count;
        if status != BookingStatus::Cancelled
            && let Some(promo) = booking.promo
        {
            *batch.promo_uses.entry(promo).or_default() -= 1;
        }
        if let Some(entry) = booking.waitlist_entry {
            let outcome = if status == BookingStatus::Cancelled {
                "fulfilled"
            } else {
                "expired"
            };
            batch
                .waitlist_changes
                .insert(entry, WaitlistChange::new(outcome, Some(booking_id)));
        }
        if let Some(owned) = self.user_seats.get_mut(&booking.user) {
            *owned = owned.saturating_sub(count);
            if *owned == 0 {
                self.user_seats.remove(&booking.user);
            }
        }
        match batch.created_here.get(&booking_id) {
            Some(position) => batch.new_bookings[*position].status = status,
            None => batch.ended.push((booking_id, status)),
        }
    }

    /// Closes the batch: announces the new counts when seats changed, and a sell-out when the
    /// last available seat went in this batch.
    pub fn finish(&self, batch: &mut Batch, version: u64) {
        if batch.changed_seats.is_empty() {
            return;
        }
        self.emit(
            batch,
            ShowInventory {
                counts: self.counts,
                version,
            },
        );
        if batch.had_available == Some(true) && self.counts.available == 0 {
            self.emit(batch, ShowSoldOut { version });
        }
    }

    fn emit<T: Message>(&self, batch: &mut Batch, payload: T) {
        let show = self.terms.show_id;
        let envelope = common::contracts::Envelope::new(Some(show), payload);
        batch.events.push(OutgoingEvent {
            message_id: envelope.message_id,
            exchange: Route::Events,
            routing_key: common::contracts::event_routing_key::<T>(show),
            kind: T::TYPE,
            body: serde_json::to_value(&envelope).expect("contracts always serialise"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(max: u32) -> ShowTerms {
        ShowTerms {
            show_id: ShowId::new(),
            currency: "EUR".into(),
            hold_seconds: 300,
            max_tickets_per_user: max,
            prices: HashMap::from([("A".to_owned(), 5000), ("B".to_owned(), 3000)]),
            starts_at: now() + time::Duration::days(30),
            cancel_cutoff: time::Duration::days(1),
            payment_grace: time::Duration::minutes(2),
            ticket_signer: TicketSigner::new("test ticket key"),
        }
    }

    /// Two rows of `per_row` seats: row 0 tier A, row 1 tier B.
    fn seats(per_row: u32) -> Vec<LoadedSeat> {
        (0..2 * per_row)
            .map(|index| LoadedSeat {
                seat_id: SeatId::new(),
                index,
                row: index / per_row,
                number: (index % per_row) as i32 + 1,
                x: (index % per_row) as f32,
                y: (index / per_row) as f32,
                tier: if index < per_row { "A".into() } else { "B".into() },
                status: SeatStatus::Available,
                booking_id: None,
            })
            .collect()
    }

    fn hold(user: UserId, selection: SeatSelection) -> HoldSeats {
        HoldSeats {
            command_id: CommandId::new(),
            user_id: user,
            selection,
            promo_code: None,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn the_first_request_for_a_seat_wins_and_the_second_is_told_which_seat_was_taken() {
        let loaded = seats(10);
        let wanted = loaded[3].seat_id;
        let mut state = ShowState::load(terms(4), loaded, Vec::new()).unwrap();
        let mut batch = state.begin();
        let first = hold(UserId::new(), SeatSelection::Seats { seat_ids: vec![wanted] });
        let second = hold(UserId::new(), SeatSelection::Seats { seat_ids: vec![wanted] });
        assert_eq!(state.hold(&mut batch, &first, false, now()), Outcome::Held);
        assert_eq!(
            state.hold(&mut batch, &second, false, now()),
            Outcome::Rejected(RejectionCode::SeatsUnavailable)
        );
        assert_eq!(batch.hold_results[1].unavailable, vec![wanted]);
        assert_eq!(state.counts().held, 1);
        assert_eq!(state.counts().available, 19);
    }

    #[test]
    fn a_command_seen_twice_in_one_batch_has_one_effect() {
        let mut state = ShowState::load(terms(4), seats(10), Vec::new()).unwrap();
        let mut batch = state.begin();
        let command = hold(
            UserId::new(),
            SeatSelection::BestAvailable {
                quantity: 2,
                tier: None,
                adjacent: true,
            },
        );
        assert_eq!(state.hold(&mut batch, &command, false, now()), Outcome::Held);
        assert_eq!(state.hold(&mut batch, &command, false, now()), Outcome::Duplicate);
        assert_eq!(batch.new_bookings.len(), 1);
        assert_eq!(state.counts().held, 2);
    }

    #[test]
    fn the_per_user_limit_counts_every_live_hold_of_the_fan() {
        let mut state = ShowState::load(terms(3), seats(10), Vec::new()).unwrap();
        let fan = UserId::new();
        let mut batch = state.begin();
        let two = SeatSelection::BestAvailable {
            quantity: 2,
            tier: Some("B".into()),
            adjacent: false,
        };
        assert_eq!(
            state.hold(&mut batch, &hold(fan, two.clone()), false, now()),
            Outcome::Held
        );
        assert_eq!(
            state.hold(&mut batch, &hold(fan, two.clone()), false, now()),
            Outcome::Rejected(RejectionCode::LimitExceeded)
        );
        assert_eq!(
            state.hold(&mut batch, &hold(UserId::new(), two), false, now()),
            Outcome::Held
        );
    }

    #[test]
    fn a_lapsed_hold_puts_its_seats_back_on_sale_and_frees_the_fans_allowance() {
        let mut state = ShowState::load(terms(2), seats(4), Vec::new()).unwrap();
        let fan = UserId::new();
        let two = SeatSelection::BestAvailable {
            quantity: 2,
            tier: None,
            adjacent: true,
        };
        let mut batch = state.begin();
        state.hold(&mut batch, &hold(fan, two.clone()), false, now());
        assert_eq!(state.next_expiry(), Some(now() + time::Duration::seconds(300)));

        let mut later = state.begin();
        assert_eq!(state.expire(&mut later, now() + time::Duration::seconds(299)), 0);
        assert_eq!(state.expire(&mut later, now() + time::Duration::seconds(300)), 1);
        assert_eq!(state.counts().available, 8);
        assert_eq!(later.ended.len(), 1);
        assert_eq!(later.changed_seats.len(), 2);
        assert_eq!(state.hold(&mut later, &hold(fan, two), false, now()), Outcome::Held);
    }

    #[test]
    fn a_hold_released_in_the_batch_that_created_it_is_written_once_with_its_final_status() {
        let mut state = ShowState::load(terms(4), seats(4), Vec::new()).unwrap();
        let fan = UserId::new();
        let mut batch = state.begin();
        let command = hold(
            fan,
            SeatSelection::BestAvailable {
                quantity: 1,
                tier: None,
                adjacent: false,
            },
        );
        state.hold(&mut batch, &command, false, now());
        let booking_id = batch.new_bookings[0].booking_id;
        let release = ReleaseHold {
            command_id: CommandId::new(),
            user_id: fan,
            booking_id,
        };
        assert_eq!(state.release(&mut batch, &release, false), Outcome::Released);
        assert!(batch.ended.is_empty());
        assert_eq!(batch.new_bookings[0].status, BookingStatus::Released);
        assert_eq!(state.counts().available, 8);
    }

    #[test]
    fn only_the_owner_can_release_a_hold() {
        let mut state = ShowState::load(terms(4), seats(4), Vec::new()).unwrap();
        let mut batch = state.begin();
        let command = hold(
            UserId::new(),
            SeatSelection::BestAvailable {
                quantity: 1,
                tier: None,
                adjacent: false,
            },
        );
        state.hold(&mut batch, &command, false, now());
        let release = ReleaseHold {
            command_id: CommandId::new(),
            user_id: UserId::new(),
            booking_id: batch.new_bookings[0].booking_id,
        };
        assert_eq!(state.release(&mut batch, &release, false), Outcome::NotReleasable);
        assert_eq!(state.counts().held, 1);
    }

    #[test]
    fn selling_the_last_seat_announces_the_sell_out_once() {
        let mut state = ShowState::load(terms(10), seats(1), Vec::new()).unwrap();
        let mut batch = state.begin();
        let two = SeatSelection::BestAvailable {
            quantity: 2,
            tier: None,
            adjacent: false,
        };
        // Two tiers of one seat each: no single tier has two seats.
        assert_eq!(
            state.hold(&mut batch, &hold(UserId::new(), two), false, now()),
            Outcome::Rejected(RejectionCode::SeatsUnavailable)
        );
        for _ in 0..2 {
            let one = SeatSelection::BestAvailable {
                quantity: 1,
                tier: None,
                adjacent: false,
            };
            assert_eq!(
                state.hold(&mut batch, &hold(UserId::new(), one), false, now()),
                Outcome::Held
            );
        }
        state.finish(&mut batch, 7);
        let kinds: Vec<&str> = batch.events.iter().map(|event| event.kind).collect();
        assert_eq!(
            kinds,
            [
                "hold.rejected",
                "hold.placed",
                "hold.placed",
                "show.inventory",
                "show.sold_out"
            ]
        );
    }

    #[test]
    fn the_bitmap_sets_the_bit_of_each_available_seat_msb_first() {
        let mut loaded = seats(5);
        loaded[0].status = SeatStatus::Blocked;
        let state = ShowState::load(terms(4), loaded, Vec::new()).unwrap();
        assert_eq!(state.bitmap(), vec![0b0111_1111, 0b1100_0000]);
    }

    #[test]
    fn unknown_seats_duplicates_and_unknown_tiers_are_invalid() {
        let loaded = seats(4);
        let known = loaded[0].seat_id;
        let mut state = ShowState::load(terms(4), loaded, Vec::new()).unwrap();
        let mut batch = state.begin();
        for selection in [
            SeatSelection::Seats {
                seat_ids: vec![SeatId::new()],
            },
            SeatSelection::Seats {
                seat_ids: vec![known, known],
            },
            SeatSelection::Seats { seat_ids: vec![] },
            SeatSelection::BestAvailable {
                quantity: 1,
                tier: Some("Z".into()),
                adjacent: false,
            },
        ] {
            assert_eq!(
                state.hold(&mut batch, &hold(UserId::new(), selection), false, now()),
                Outcome::Rejected(RejectionCode::InvalidSeats)
            );
        }
    }
}
