//! The one path from an offer to a live stream, for every signalling protocol. WHIP, WHEP
//! and any later adapter (WCS's WebSocket) hand in an [`Offer`] — who (token, address), what
//! (publish or play, name, SDP), where (app, query) — and get a [`SessionAnswer`] or a typed
//! [`Refusal`] back. The offer rate limit, the name and app checks, holds, the media
//! pre-checks, admission by plugin and REST hook, negotiation, registration and the stop
//! handle live here, once. Adapters only translate their wire format.

pub mod limits;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::cluster::Cluster;
use crate::config::ConfigStore;
use crate::hooks::HookClient;
use crate::hooks::admission::{self, Admission};
use crate::media::{Media, MediaError, OfferRequest, Origin, SessionAnswer, resource_path};
use crate::policy::{AdmissionRequest, Code, PolicyHost};
use crate::registry::{Bearer, Hold, NewStream, Registry, StopReason, StreamRecord};

/// A stream name is at most this long (and printable).
pub const MAX_NAME_LEN: usize = 256;

/// What an offer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publish,
    Play,
}

/// An offer as any signalling protocol delivers it.
#[derive(Debug, Clone)]
pub struct Offer {
    pub role: Role,
    pub name: String,
    /// `None` means `defaultApp`.
    pub app_key: Option<String>,
    pub sdp: String,
    /// The rest of the client's query (or its protocol's equivalent), for policies.
    pub query: BTreeMap<String, String>,
    pub token: Option<String>,
    pub remote_ip: IpAddr,
    /// `ip:port`, as records and hooks show it.
    pub remote_address: String,
    /// The stream's id when the protocol lets the client choose it (WCS's
    /// `mediaSessionId`); a new one otherwise.
    pub media_session_id: Option<Uuid>,
    /// The signalling connection the stream belongs to (WCS's `sessionId`); `None` for
    /// WHIP/WHEP, whose session is the stream's own resource.
    pub session_id: Option<String>,
}

/// Why an offer did not become a stream. Each adapter says it in its own terms.
#[derive(Debug)]
pub enum Refusal {
    /// Over `offer_rate_per_address`; try again after `retry_after`.
    TooManyOffers {
        rate: u32,
        retry_after: Duration,
        from: IpAddr,
    },
    /// A name the server does not take.
    BadName(String),
    /// An app `apps.toml` does not define.
    UnknownApp(String),
    /// A hold refuses this stream.
    Held(Box<Hold>),
    /// The app's plugin or web server said no (`status` 4xx), or could not be asked (503).
    Rejected {
        status: u16,
        reason: String,
        answer: Option<serde_json::Value>,
    },
    /// The offer, the name's state, draining, the session limit, or the media layer.
    Media(MediaError),
}

impl From<MediaError> for Refusal {
    fn from(e: MediaError) -> Self {
        Refusal::Media(e)
    }
}

/// The session service: one per server, shared by every adapter.
pub struct Sessions {
    media: Arc<Media>,
    registry: Arc<Registry>,
    config: Arc<ConfigStore>,
    hooks: HookClient,
    policy: Arc<PolicyHost>,
    offers: limits::OfferLimiter,
    /// Set when the node is in a cluster: where streams published elsewhere are found.
    cluster: std::sync::OnceLock<Arc<Cluster>>,
}

impl Sessions {
    pub fn new(
        media: Arc<Media>,
        registry: Arc<Registry>,
        config: Arc<ConfigStore>,
        hooks: HookClient,
        policy: Arc<PolicyHost>,
    ) -> Arc<Self> {
        Arc::new(Sessions {
            media,
            registry,
            config,
            hooks,
            policy,
            offers: limits::OfferLimiter::default(),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// Takes an offer all the way to a registered, live session, or refuses it having
    /// changed nothing. The cheap checks come first, so a request that cannot succeed costs
    /// the app's web server nothing.
    pub async fn open(&self, offer: Offer) -> Result<SessionAnswer, Refusal> {
        let rate = self.config.load().settings.offer_rate_per_address;
        if let Err(retry_after) = self.offers.check(offer.remote_ip, rate) {
            tracing::info!(remote = %offer.remote_address, "offer refused: over offer_rate_per_address");
            return Err(Refusal::TooManyOffers {
                rate,
                retry_after,
                from: offer.remote_ip,
            });
        }
        let publish = offer.role == Role::Publish;
        let mut request = self.request(offer)?;
        let hold = self.registry.held(&request.name, publish, &request.app_key);
        // A hold until admitted defers to the app's admission policy, if it has one.
        let defer_to_policy = hold.as_ref().is_some_and(|h| {
            h.until_admitted && self.has_admission_policy(&request.app_key, publish)
        });
        if let Some(hold) = hold.as_ref().filter(|_| !defer_to_policy) {
            tracing::info!(name = %request.name, app = %request.app_key, publish, hold = hold.hold_id, "request refused by a hold");
            return Err(Refusal::Held(Box::new(hold.clone())));
        }
        let origin = if publish {
            None
        } else {
            self.origin_of(&request).await?
        };
        self.media.precheck(&request, publish, origin.is_some())?;
        match self.admit(&request, publish).await {
            Admission::Admit { custom } => {
                if let Some(custom) = custom {
                    request.custom = custom;
                }
                if let Some(hold) = hold.as_ref().filter(|_| defer_to_policy) {
                    let id = hold.hold_id;
                    self.registry.release(|h| h.hold_id == id);
                    tracing::info!(name = %request.name, app = %request.app_key, hold = id, "hold lifted: the admission policy admits again");
                }
            }
            Admission::Reject {
                status,
                reason,
                answer,
            } => {
                tracing::info!(name = %request.name, app = %request.app_key, publish, %reason, "request refused by admission");
                return Err(Refusal::Rejected {
                    status,
                    reason,
                    answer,
                });
            }
        }
        let (name, app, remote) = (
            request.name.clone(),
            request.app_key.clone(),
            request.remote_address.clone(),
        );
        if let Some(origin) = &origin {
            self.media
                .open_edge(&request.name, &request.app_key, origin)
                .await?;
        }
        let answer = if publish {
            self.media.publish(request).await?
        } else {
            self.media.play(request).await?
        };
        tracing::info!(stream = %answer.id, %name, %app, published = publish, %remote, "session created");
        Ok(answer)
    }

    /// Where a stream to play is published when it is not published here: another node of
    /// the cluster (then this node becomes its edge), or nowhere (`None`). When the cluster
    /// cannot be asked, the player is told so (`503`), not that the stream does not exist.
    async fn origin_of(&self, request: &OfferRequest) -> Result<Option<Origin>, Refusal> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(None);
        };
        if self.registry.publisher_of(&request.name).is_some() {
            return Ok(None);
        }
        let located = cluster
            .locate(&request.name, &request.app_key)
            .await
            .map_err(|e| Refusal::Rejected {
                status: 503,
                reason: format!(
                    "'{}' is not published on this node, and the cluster cannot be asked: {e}",
                    request.name
                ),
                answer: None,
            })?;
        Ok(located.map(|found| Origin {
            node_id: found.node_id,
            whep_url: found.whep_url,
            address: found.address,
            media_kinds: found.media_kinds,
        }))
    }

    /// Plays of streams published on other nodes go through `cluster` from now on.
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The client ends its own session. `false` when there is no such session.
    pub fn close(&self, id: Uuid) -> bool {
        self.registry.stop(id, StopReason::ClientLeft)
    }

    /// The checks of an offer that need neither media nor policy.
    fn request(&self, offer: Offer) -> Result<OfferRequest, Refusal> {
        let name = offer.name;
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(Refusal::BadName(format!(
                "a stream name is 1 to {MAX_NAME_LEN} printable characters"
            )));
        }
        let app_key = offer.app_key.unwrap_or_else(|| "defaultApp".to_string());
        if self.config.load().apps.get(&app_key).is_none() {
            return Err(Refusal::UnknownApp(app_key));
        }
        Ok(OfferRequest {
            media_session_id: offer.media_session_id.unwrap_or_else(Uuid::new_v4),
            session_id: offer.session_id,
            name,
            app_key,
            sdp: offer.sdp,
            custom: offer.query,
            bearer: Bearer::new(offer.token),
            remote_address: offer.remote_address,
        })
    }

    /// Whether a plugin or a REST hook of the app decides on new publishes (or plays).
    fn has_admission_policy(&self, app: &str, publish: bool) -> bool {
        let method = admission::method(publish);
        self.policy.decides_admission(app, publish)
            || self
                .config
                .load()
                .apps
                .get(app)
                .is_some_and(|a| a.url.is_some() && a.methods.contains_key(method))
    }

    /// The app's word on a new stream: its plugin first; if it admits or has no opinion, its
    /// web server's `publishStream` / `playStream` hook.
    async fn admit(&self, request: &OfferRequest, publish: bool) -> Admission {
        let mut new = if publish {
            NewStream::publisher(&request.name, &request.app_key)
        } else {
            NewStream::player(&request.name, &request.app_key)
        };
        new.media_session_id = Some(request.media_session_id);
        new.session_id = request
            .session_id
            .clone()
            .unwrap_or_else(|| resource_path(request.media_session_id));
        new.remote_address = request.remote_address.clone();
        new.custom = request.custom.clone();
        new.bearer = request.bearer.clone();
        let record = StreamRecord::preview(new, self.registry.node_id());
        let config = self.config.load();
        let policy_request = AdmissionRequest {
            token: request.bearer.expose().map(String::from),
            query: request.custom.clone(),
            remote_address: request.remote_address.clone(),
        };
        match self.policy.admit(&record, policy_request).await {
            Some(Ok(Code::Held(reason, _))) => {
                return Admission::Reject {
                    status: 403,
                    reason: reason.unwrap_or_else(|| "refused by policy (403)".into()),
                    answer: None,
                };
            }
            Some(Ok(Code::Code(code, reason))) if !(200..300).contains(&code) => {
                return Admission::Reject {
                    status: if (400..500).contains(&code) {
                        code
                    } else {
                        403
                    },
                    reason: reason.unwrap_or_else(|| format!("refused by policy ({code})")),
                    answer: None,
                };
            }
            Some(Err(e)) => {
                let method = admission::method(publish);
                let fails = config
                    .apps
                    .get(&record.app_key)
                    .and_then(|a| a.methods.get(method))
                    .is_none_or(|m| m.fails_on_error());
                if fails {
                    return Admission::Reject {
                        status: 503,
                        reason: format!("admission policy failed: {e}"),
                        answer: None,
                    };
                }
            }
            _ => {}
        }
        admission::admit(&self.hooks, &config, &record).await
    }
}
