//! The owner's administrative operations: grant, revoke, list grants, read
//! the audit log. The `OwnerAdmin` service and the CLI's `--offline` mode
//! both call these, so the rules live in one place.

use std::sync::Arc;

use ambishare_shared::{DatasetName, OwnerId, PartyName};

use crate::error::{Error, Result};
use crate::home::Home;
use crate::pki::{self, ClientCa};
use crate::store::{OwnerStore, PartyCert};
use crate::types::{AuditEvent, AuditQuery, Grant, GrantOutcome, GrantRequest, now_unix_ms};

/// Party name recorded in the audit log for the owner's own admin actions.
pub const ADMIN_AUDIT_NAME: &str = "admin";

/// Administrative operations over an owner's store.
pub struct AdminOps {
    store: Arc<OwnerStore>,
    client_ca: ClientCa,
    server_ca_pem: String,
    owner: OwnerId,
}

impl std::fmt::Debug for AdminOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminOps").field("owner", &self.owner).finish_non_exhaustive()
    }
}

impl AdminOps {
    /// Over an open store; reads the client CA (key permissions checked) and the server CA.
    pub fn new(home: &Home, store: Arc<OwnerStore>, owner: OwnerId) -> Result<Self> {
        let client_ca = ClientCa::load(&home.read_pem("client-ca.pem")?, &home.read_key_pem("client-ca.key")?)?;
        Ok(AdminOps { store, client_ca, server_ca_pem: home.read_pem("server-ca.pem")?, owner })
    }

    /// Opens the home directly (the key service must not be running: it holds the store).
    pub fn open_offline(home: &Home) -> Result<Self> {
        home.check_key_permissions()?;
        let owner = home.load_signing_key()?.public_key().owner_id();
        let store = Arc::new(OwnerStore::open(&home.store_dir())?);
        Self::new(home, store, owner)
    }

    pub fn store(&self) -> &Arc<OwnerStore> {
        &self.store
    }

    pub fn owner(&self) -> OwnerId {
        self.owner
    }

    pub fn server_ca_pem(&self) -> &str {
        &self.server_ca_pem
    }

    /// Grants `request.party` the dataset at a tier. With a CSR, signs the
    /// party's certificate and records it; without one, the party must hold
    /// an active certificate already. A grant replaces an earlier one on the
    /// same dataset (so it also renews a revoked or expired grant).
    pub fn grant(&self, request: GrantRequest) -> Result<GrantOutcome> {
        /// The furthest expiry a grant may have (100 years).
        const MAX_GRANT_MS: i64 = 100 * 366 * 86_400_000;
        let now = now_unix_ms();
        if request.expires_unix_ms.is_some_and(|t| t <= now) {
            return Err(Error::invalid("expiry", "lies in the past"));
        }
        if request.expires_unix_ms.is_some_and(|t| t > now.saturating_add(MAX_GRANT_MS)) {
            return Err(Error::invalid("expiry", "more than 100 years ahead; grant without expiry instead"));
        }
        let issued = match &request.csr_pem {
            Some(csr) => Some(self.client_ca.sign_csr(
                csr,
                &request.party,
                request.certificate_days.unwrap_or(pki::DEFAULT_PARTY_CERT_DAYS),
            )?),
            None => {
                let enrolled = self
                    .store
                    .certs_of(&request.party)?
                    .iter()
                    .any(|c| c.revoked_unix_ms.is_none() && c.not_after_unix_ms > now);
                if !enrolled {
                    return Err(Error::FailedPrecondition(format!(
                        "party {} holds no active certificate; grant with its CSR",
                        request.party
                    )));
                }
                None
            }
        };
        let cert = issued.as_ref().map(|c| PartyCert {
            fingerprint: c.fingerprint,
            party: request.party.clone(),
            issued_unix_ms: now,
            not_after_unix_ms: c.not_after_unix_ms,
            revoked_unix_ms: None,
        });
        let grant = Grant {
            party: request.party.clone(),
            dataset: request.dataset.clone(),
            tier: request.tier,
            granted_unix_ms: now,
            expires_unix_ms: request.expires_unix_ms,
            revoked_unix_ms: None,
        };
        let mut detail = format!("granted {} on {} at tier {}", grant.party, grant.dataset, grant.tier);
        if let Some(t) = grant.expires_unix_ms {
            detail.push_str(&format!(", expires at {t} ms"));
        }
        if let Some(c) = &issued {
            detail.push_str(&format!(", certificate {}", hex::encode(&c.fingerprint[..8])));
        }
        // Recorded once it holds: an audit record of a grant that failed would mislead.
        self.store.put_grant(&grant, cert.as_ref())?;
        self.store.append_audit(&mut [AuditEvent::new("Grant", ADMIN_AUDIT_NAME).detail(detail.clone())])?;
        tracing::info!(party = %grant.party, dataset = %grant.dataset, tier = %grant.tier, "{detail}");
        Ok(GrantOutcome {
            grant,
            certificate_pem: issued.map(|c| c.pem),
            server_ca_pem: self.server_ca_pem.clone(),
            owner_id: self.owner,
        })
    }

    /// Revokes a party's grant on one dataset, or every grant and certificate
    /// of the party. Returns the number of grants revoked. Takes effect on
    /// the party's next request.
    pub fn revoke(&self, party: &PartyName, dataset: Option<&DatasetName>) -> Result<u32> {
        let known = !self.store.grants(Some(party))?.is_empty() || !self.store.certs_of(party)?.is_empty();
        if !known {
            return Err(Error::NotFound(format!("no party named {party}")));
        }
        let (grants, certs) = self.store.revoke(party, dataset, now_unix_ms())?;
        let detail = match dataset {
            Some(d) => format!("revoked {party} on {d}: {grants} grant(s)"),
            None => format!("revoked {party}: {grants} grant(s), {certs} certificate(s)"),
        };
        self.store.append_audit(&mut [AuditEvent::new("Revoke", ADMIN_AUDIT_NAME).detail(detail.clone())])?;
        self.store.flush()?;
        tracing::info!(party = %party, "{detail}");
        Ok(grants)
    }

    pub fn list_grants(&self, party: Option<&PartyName>) -> Result<Vec<Grant>> {
        self.store.grants(party)
    }

    pub fn audit_log(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        self.store.audit(query.after_seq, query.effective_limit()?, query.party.as_deref())
    }
}
