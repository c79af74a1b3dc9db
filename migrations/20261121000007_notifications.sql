-- Notifications: organizer webhooks per event, and the delivery lease of a notification.
-- Written by: ingress (an event's webhook settings, set by its organizer); the notifier (notification).

-- Where the notifier POSTs the event's booking facts (booking.confirmed, booking.cancelled), and
-- the secret it signs them with (`Floodgate-Signature: t=<unix ts>,v1=<hex HMAC-SHA256 of
-- "<ts>.<body>">`). The secret is stored as is because the notifier must compute the HMAC with it;
-- it is shown to the organizer once, like a gateway's webhook secret.
ALTER TABLE event
    ADD COLUMN webhook_url    text,
    ADD COLUMN webhook_secret text,
    -- A URL without a secret could not be signed, a secret without a URL is useless: both or neither.
    ADD CONSTRAINT event_webhook_complete CHECK ((webhook_url IS NULL) = (webhook_secret IS NULL)),
    -- Only HTTP(S) endpoints of sane length: no file:// or other schemes reach the HTTP client.
    ADD CONSTRAINT event_webhook_url_http
        CHECK (webhook_url ~ '^https?://' AND char_length(webhook_url) <= 2000),
    -- Long enough to resist guessing, short enough to keep out junk.
    ADD CONSTRAINT event_webhook_secret_length CHECK (char_length(webhook_secret) BETWEEN 16 AND 200);

-- While set and in the future, one notifier replica is delivering the notification: another copy
-- of the same event (a duplicate publish, a redelivery) waits instead of sending it a second time.
-- A replica that dies mid-send holds it at most this long.
ALTER TABLE notification ADD COLUMN locked_until timestamptz;
