//! Signalling protocols that are not plain HTTP. Each is a thin adapter over the one
//! session path (`sessions`): it reads its own messages into an `Offer` and turns the
//! stream's status events back into its own messages. WHIP/WHEP, being HTTP, live in `api`.

pub mod wcs;
