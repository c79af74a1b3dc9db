-- Ingress reads of the payment flow.
-- Written by: nothing new (indexes only); read by ingress.

-- Serves "the latest payment of a booking" (GET /bookings/{id}, newest attempt first). The
-- partial unique index on live charges does not cover failed attempts, which a fan retrying
-- with another card leaves behind.
CREATE INDEX payment_booking_created_idx ON payment (booking_id, created_at DESC);
