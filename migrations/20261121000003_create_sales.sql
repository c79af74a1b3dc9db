-- Sales: a show's seat inventory, bookings and their seats, hold requests, promo codes, waitlist.
-- Written by: the booking-worker, the single writer of a show (DESIGN.md "The one rule"); ingress
-- only creates the show_seat rows when it creates the show, and promo codes.
-- The constraints here are the last line of defence against a double sale: they turn a bug in
-- the writer into a failed transaction.

CREATE TABLE promo_code (
    promo_code_id    uuid PRIMARY KEY,
    code             text        NOT NULL,
    -- NULL: valid for every show.
    show_id          uuid        REFERENCES show (show_id) ON DELETE CASCADE,
    percent_off      integer,
    amount_off_cents integer,
    max_uses         integer     NOT NULL,
    -- Maintained by the booking-worker in the transaction that applies the code.
    used_count       integer     NOT NULL DEFAULT 0,
    valid_until      timestamptz NOT NULL,
    created_by       uuid        REFERENCES app_user (app_user_id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- A code is either a percentage or a fixed amount, never both or neither.
    CONSTRAINT promo_code_one_discount
        CHECK ((percent_off IS NULL) <> (amount_off_cents IS NULL)),
    CONSTRAINT promo_code_percent_range CHECK (percent_off BETWEEN 1 AND 100),
    CONSTRAINT promo_code_amount_positive CHECK (amount_off_cents > 0),
    CONSTRAINT promo_code_max_uses_positive CHECK (max_uses > 0),
    -- Usage limits hold even under concurrent redemptions.
    CONSTRAINT promo_code_usage_within_limit CHECK (used_count BETWEEN 0 AND max_uses)
);

-- A code names one promotion per show (and one global promotion), whatever its case.
CREATE UNIQUE INDEX promo_code_unique
    ON promo_code (upper(code), coalesce(show_id, '00000000-0000-0000-0000-000000000000'));

CREATE TABLE booking (
    booking_id     uuid PRIMARY KEY,
    show_id        uuid        NOT NULL REFERENCES show (show_id) ON DELETE RESTRICT,
    app_user_id    uuid        NOT NULL REFERENCES app_user (app_user_id) ON DELETE RESTRICT,
    -- held -> payment_pending -> confirmed -> cancelled -> refunded;
    -- held/payment_pending -> expired; held -> released (the fan let go);
    -- payment_pending -> held after a failed charge while time remains.
    status         text        NOT NULL,
    -- The hold request (command id) that created the booking.
    command_id     uuid        NOT NULL,
    expires_at     timestamptz NOT NULL,
    seat_count     integer     NOT NULL,
    subtotal_cents bigint      NOT NULL,
    discount_cents bigint      NOT NULL DEFAULT 0,
    total_cents    bigint      NOT NULL,
    currency       text        NOT NULL,
    promo_code_id  uuid        REFERENCES promo_code (promo_code_id) ON DELETE RESTRICT,
    -- Set when the booking came from a waitlist offer.
    waitlist_entry_id uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    confirmed_at   timestamptz,
    cancelled_at   timestamptz,
    CONSTRAINT booking_status_known CHECK (status IN (
        'held', 'payment_pending', 'confirmed', 'cancelled', 'refunded', 'expired', 'released')),
    CONSTRAINT booking_seat_count_positive CHECK (seat_count > 0),
    -- Totals add up and are never negative: a discount cannot pay the fan.
    CONSTRAINT booking_totals_consistent CHECK (
        subtotal_cents >= 0 AND discount_cents BETWEEN 0 AND subtotal_cents
        AND total_cents = subtotal_cents - discount_cents),
    CONSTRAINT booking_currency_iso CHECK (currency ~ '^[A-Z]{3}$'),
    -- A confirmed (or later cancelled/refunded) booking records when it was confirmed.
    CONSTRAINT booking_confirmed_has_time
        CHECK (status NOT IN ('confirmed', 'cancelled', 'refunded') OR confirmed_at IS NOT NULL),
    -- One hold request creates at most one booking: a redelivered HoldSeats cannot hold twice.
    CONSTRAINT booking_command_unique UNIQUE (command_id),
    -- Target of the composite foreign keys below, which tie seats to their booking's show.
    CONSTRAINT booking_id_show_unique UNIQUE (booking_id, show_id)
);

-- Serve "my bookings, newest first" (UUID v7 ids sort by creation time) and per-user limits (live bookings of a fan for a show).
CREATE INDEX booking_user_idx ON booking (app_user_id, booking_id DESC);
CREATE INDEX booking_user_show_live_idx ON booking (show_id, app_user_id)
    WHERE status IN ('held', 'payment_pending', 'confirmed');
-- Serves the expiry sweep of the active writer.
CREATE INDEX booking_expiry_idx ON booking (show_id, expires_at)
    WHERE status IN ('held', 'payment_pending');

-- The sale state of one seat for one show. Created in bulk with the show. Partitioned by show
-- (DESIGN.md "PostgreSQL"): a show's writer touches one partition, and a finished show's rows
-- can be detached without touching anyone else's.
CREATE TABLE show_seat (
    show_id    uuid    NOT NULL REFERENCES show (show_id) ON DELETE CASCADE,
    seat_id    uuid    NOT NULL REFERENCES seat (seat_id) ON DELETE RESTRICT,
    -- Copied from seat so the writer loads a show's inventory from one table.
    seat_index integer NOT NULL,
    tier       text    NOT NULL,
    status     text    NOT NULL DEFAULT 'available',
    -- The booking that holds or bought the seat.
    booking_id uuid,
    -- Bumped on every change of this row.
    version    bigint  NOT NULL DEFAULT 0,
    -- Exactly one row per (show, seat): a seat cannot exist twice in a show's inventory.
    PRIMARY KEY (show_id, seat_id),
    -- One bitmap position per seat of the show.
    CONSTRAINT show_seat_index_unique UNIQUE (show_id, seat_index),
    CONSTRAINT show_seat_status_known CHECK (status IN ('available', 'held', 'sold', 'blocked')),
    -- A held or sold seat names its booking, and only those do: no sale without a booking.
    CONSTRAINT show_seat_booking_iff_taken
        CHECK ((status IN ('held', 'sold')) = (booking_id IS NOT NULL)),
    -- The booking is for this very show.
    CONSTRAINT show_seat_booking_same_show
        FOREIGN KEY (booking_id, show_id) REFERENCES booking (booking_id, show_id)
) PARTITION BY HASH (show_id);

-- Sixteen partitions: enough to spread many shows, few enough to plan quickly.
DO $$
BEGIN
    FOR i IN 0..15 LOOP
        EXECUTE format(
            'CREATE TABLE show_seat_p%s PARTITION OF show_seat FOR VALUES WITH (MODULUS 16, REMAINDER %s)', i, i);
    END LOOP;
END
$$;

-- Serves "seats of a booking" when a booking is confirmed, released or expired.
CREATE INDEX show_seat_booking_idx ON show_seat (booking_id) WHERE booking_id IS NOT NULL;

-- The seats a booking holds or bought, with the price each was sold at.
CREATE TABLE booking_seat (
    booking_id  uuid        NOT NULL,
    show_id     uuid        NOT NULL,
    seat_id     uuid        NOT NULL,
    price_cents integer     NOT NULL,
    -- Set when the seat left the booking (expired, released, cancelled).
    released_at timestamptz,
    PRIMARY KEY (booking_id, seat_id),
    CONSTRAINT booking_seat_booking_same_show
        FOREIGN KEY (booking_id, show_id) REFERENCES booking (booking_id, show_id) ON DELETE CASCADE,
    CONSTRAINT booking_seat_show_seat
        FOREIGN KEY (show_id, seat_id) REFERENCES show_seat (show_id, seat_id),
    CONSTRAINT booking_seat_price_non_negative CHECK (price_cents >= 0),
    -- Target of the ticket's foreign key, which ties a ticket to its booking, show and seat at once.
    CONSTRAINT booking_seat_booking_show_seat_unique UNIQUE (booking_id, show_id, seat_id)
);

-- At most one live booking per seat: the database refuses a second booking of a seat that is
-- still held or sold, whatever the writer believes.
CREATE UNIQUE INDEX booking_seat_one_live_booking
    ON booking_seat (show_id, seat_id) WHERE released_at IS NULL;

-- A seat held or sold by a booking is one of that booking's seats: show_seat and booking_seat
-- cannot tell different stories. Deferred to the commit, so the writer may order its
-- statements freely inside a batch.
ALTER TABLE show_seat
    ADD CONSTRAINT show_seat_in_its_booking
    FOREIGN KEY (booking_id, seat_id) REFERENCES booking_seat (booking_id, seat_id)
    DEFERRABLE INITIALLY DEFERRED;

-- The outcome of one HoldSeats command, keyed by its command id: a redelivered command is
-- answered from here instead of being applied twice.
CREATE TABLE hold_request (
    hold_request_id uuid PRIMARY KEY,
    show_id         uuid        NOT NULL REFERENCES show (show_id) ON DELETE CASCADE,
    app_user_id     uuid        NOT NULL REFERENCES app_user (app_user_id) ON DELETE CASCADE,
    status          text        NOT NULL,
    booking_id      uuid        REFERENCES booking (booking_id),
    -- Stable rejection code (seats_unavailable, limit_exceeded, ...) and its details.
    code            text,
    detail          jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT hold_request_status_known CHECK (status IN ('held', 'rejected')),
    -- A held request names its booking; a rejected one names why.
    CONSTRAINT hold_request_outcome_complete CHECK (
        (status = 'held' AND booking_id IS NOT NULL AND code IS NULL)
        OR (status = 'rejected' AND booking_id IS NULL AND code IS NOT NULL))
);

-- Commands other than HoldSeats that the writer has applied: redeliveries become no-ops.
CREATE TABLE processed_command (
    command_id   uuid PRIMARY KEY,
    show_id      uuid        NOT NULL REFERENCES show (show_id) ON DELETE CASCADE,
    command_type text        NOT NULL,
    result       jsonb       NOT NULL DEFAULT '{}',
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- A fan waiting for seats of a sold-out show.
CREATE TABLE waitlist_entry (
    waitlist_entry_id uuid PRIMARY KEY,
    show_id           uuid        NOT NULL REFERENCES show (show_id) ON DELETE CASCADE,
    app_user_id       uuid        NOT NULL REFERENCES app_user (app_user_id) ON DELETE CASCADE,
    quantity          integer     NOT NULL,
    -- waiting -> offered -> fulfilled | expired; waiting -> cancelled.
    status            text        NOT NULL DEFAULT 'waiting',
    offered_booking_id uuid       REFERENCES booking (booking_id),
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT waitlist_entry_status_known
        CHECK (status IN ('waiting', 'offered', 'fulfilled', 'expired', 'cancelled')),
    CONSTRAINT waitlist_entry_quantity_sane CHECK (quantity BETWEEN 1 AND 100),
    -- An offer names the booking that holds the offered seats.
    CONSTRAINT waitlist_entry_offer_has_booking
        CHECK (status <> 'offered' OR offered_booking_id IS NOT NULL)
);

-- One open waitlist place per fan and show.
CREATE UNIQUE INDEX waitlist_entry_one_open_per_user
    ON waitlist_entry (show_id, app_user_id) WHERE status IN ('waiting', 'offered');
-- Serves "next in line" (first come, first offered).
CREATE INDEX waitlist_entry_queue_idx ON waitlist_entry (show_id, created_at) WHERE status = 'waiting';

ALTER TABLE booking
    ADD CONSTRAINT booking_waitlist_entry_fk
    FOREIGN KEY (waitlist_entry_id) REFERENCES waitlist_entry (waitlist_entry_id);
