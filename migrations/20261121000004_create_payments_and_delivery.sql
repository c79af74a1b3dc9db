-- Payments, refunds, tickets, notifications, gateway webhooks and the transactional outbox.
-- Written by: payment creation, tickets and outbox rows by the booking-worker; payment status and
-- refunds by the payment-worker; webhook_event and check-ins by ingress; notifications by the notifier.

CREATE TABLE payment (
    payment_id        uuid PRIMARY KEY,
    booking_id        uuid        NOT NULL REFERENCES booking (booking_id) ON DELETE RESTRICT,
    amount_cents      bigint      NOT NULL,
    currency          text        NOT NULL,
    -- processing -> succeeded | failed; succeeded -> refunded (fully) .
    status            text        NOT NULL DEFAULT 'processing',
    -- Sent as the gateway's Idempotency-Key on every attempt of this charge: retries can never
    -- charge the card twice.
    idempotency_key   text        NOT NULL,
    -- The card token the fan's browser got from the gateway; no card data is stored.
    card_token        text        NOT NULL,
    -- The gateway's payment intent id, once known.
    gateway_reference text,
    failure_code      text,
    -- Sum of succeeded refunds; maintained by the payment-worker.
    refunded_cents    bigint      NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT payment_status_known
        CHECK (status IN ('processing', 'succeeded', 'failed', 'refunded')),
    CONSTRAINT payment_amount_non_negative CHECK (amount_cents >= 0),
    CONSTRAINT payment_currency_iso CHECK (currency ~ '^[A-Z]{3}$'),
    -- One gateway charge per idempotency key.
    CONSTRAINT payment_idempotency_key_unique UNIQUE (idempotency_key),
    -- One payment row per gateway intent: a webhook updates exactly one payment.
    CONSTRAINT payment_gateway_reference_unique UNIQUE (gateway_reference),
    -- Never refund more than was charged.
    CONSTRAINT payment_refund_within_amount CHECK (refunded_cents BETWEEN 0 AND amount_cents)
);

-- A booking has at most one charge in flight or taken: a card is never charged twice for it.
-- (A failed attempt does not count, so the fan can retry with another card.)
CREATE UNIQUE INDEX payment_one_live_charge_per_booking
    ON payment (booking_id) WHERE status IN ('processing', 'succeeded', 'refunded');
-- Serves the sweep that reconciles payments stuck in processing.
CREATE INDEX payment_processing_idx ON payment (updated_at) WHERE status = 'processing';

CREATE TABLE refund (
    refund_id         uuid PRIMARY KEY,
    payment_id        uuid        NOT NULL REFERENCES payment (payment_id) ON DELETE RESTRICT,
    amount_cents      bigint      NOT NULL,
    reason            text        NOT NULL,
    -- pending -> succeeded | failed.
    status            text        NOT NULL DEFAULT 'pending',
    idempotency_key   text        NOT NULL,
    gateway_reference text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refund_status_known CHECK (status IN ('pending', 'succeeded', 'failed')),
    CONSTRAINT refund_amount_positive CHECK (amount_cents > 0),
    -- One gateway refund per idempotency key: a retried refund never pays back twice.
    CONSTRAINT refund_idempotency_key_unique UNIQUE (idempotency_key),
    CONSTRAINT refund_gateway_reference_unique UNIQUE (gateway_reference)
);

-- Serves "refunds of a payment" (the refunded total) and the foreign key.
CREATE INDEX refund_payment_idx ON refund (payment_id);

CREATE TABLE ticket (
    ticket_id     uuid PRIMARY KEY,
    booking_id    uuid        NOT NULL REFERENCES booking (booking_id) ON DELETE RESTRICT,
    show_id       uuid        NOT NULL,
    seat_id       uuid        NOT NULL,
    -- Unguessable code printed in the QR image.
    code          text        NOT NULL,
    -- Server-key signature over the code, show and seat: a forged code fails the check.
    signature     text        NOT NULL,
    issued_at     timestamptz NOT NULL DEFAULT now(),
    checked_in_at timestamptz,
    checked_in_by uuid        REFERENCES app_user (app_user_id) ON DELETE SET NULL,
    -- Set when the booking is cancelled: the ticket no longer admits anyone.
    voided_at     timestamptz,
    CONSTRAINT ticket_code_unique UNIQUE (code),
    -- A ticket is for a seat its booking holds, at that booking's show.
    CONSTRAINT ticket_booking_seat
        FOREIGN KEY (booking_id, show_id, seat_id) REFERENCES booking_seat (booking_id, show_id, seat_id)
);

-- One valid ticket per seat of a show: a seat is never ticketed twice.
CREATE UNIQUE INDEX ticket_one_valid_per_seat ON ticket (show_id, seat_id) WHERE voided_at IS NULL;
-- Serves "tickets of a booking" (GET /bookings/{id}/tickets, voiding on cancel).
CREATE INDEX ticket_booking_idx ON ticket (booking_id);

-- Gateway webhook events already received. The primary key is the gateway's event id, so a
-- replayed or duplicated event is recognised and has no second effect.
CREATE TABLE webhook_event (
    gateway_event_id text PRIMARY KEY,
    event_type       text        NOT NULL,
    payload          jsonb       NOT NULL,
    received_at      timestamptz NOT NULL DEFAULT now(),
    processed_at     timestamptz
);

-- An e-mail or organizer webhook to deliver, with its retries.
CREATE TABLE notification (
    notification_id uuid PRIMARY KEY,
    -- The event that caused it plus the kind of message: a redelivered event sends nothing twice.
    dedupe_key      text        NOT NULL,
    kind            text        NOT NULL,
    channel         text        NOT NULL,
    recipient       text        NOT NULL,
    booking_id      uuid        REFERENCES booking (booking_id) ON DELETE SET NULL,
    subject         text        NOT NULL DEFAULT '',
    status          text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    CONSTRAINT notification_dedupe_key_unique UNIQUE (dedupe_key),
    CONSTRAINT notification_channel_known CHECK (channel IN ('email', 'webhook')),
    CONSTRAINT notification_status_known CHECK (status IN ('pending', 'sent', 'failed', 'dead')),
    CONSTRAINT notification_attempts_non_negative CHECK (attempts >= 0)
);

-- Serves "notifications of a booking" (the audit: one e-mail per confirmed booking).
CREATE INDEX notification_booking_idx ON notification (booking_id);

-- Events written in the same transaction as the state change they describe, published to
-- RabbitMQ by a relay right after the commit and again by a sweep of unpublished rows.
CREATE TABLE outbox (
    outbox_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The envelope's message_id: consumers deduplicate on it.
    message_id   uuid        NOT NULL,
    exchange     text        NOT NULL,
    routing_key  text        NOT NULL,
    -- The whole envelope, as published.
    body         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    CONSTRAINT outbox_message_id_unique UNIQUE (message_id)
);

-- Serves the relay's sweep of unpublished rows, oldest first.
CREATE INDEX outbox_unpublished_idx ON outbox (outbox_id) WHERE published_at IS NULL;
