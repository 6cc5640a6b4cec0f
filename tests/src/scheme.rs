//! The shipped scheme (format v3) as the evaluation, the model report and the
//! tests run it: fakes and sign flips derived from a master secret, with the
//! model's fakes' tables.

use ambishare_shared::derived::Derived;
use ambishare_shared::model::ModelRunner;
use ambishare_shared::{Bands, DerivationContext, FakeTables, MasterSecret, SparseCode, ambiguate_derived};

use crate::Result;

/// Format v3 for one model and one owner's master secret.
pub struct DerivedScheme {
    master: MasterSecret,
    context: DerivationContext,
    tables: FakeTables,
}

impl DerivedScheme {
    /// The scheme an owner with master secret `master` publishes with under `runner`'s model.
    pub fn for_model(runner: &ModelRunner, master: [u8; 32]) -> Result<Self> {
        let m = runner.manifest();
        Ok(DerivedScheme {
            master: MasterSecret::from_bytes(&master)?,
            context: DerivationContext { model: *runner.id(), k_fake: m.k_fake, bands: Bands::for_manifest(m)? },
            tables: FakeTables::for_manifest(m)?,
        })
    }

    /// The public code, the keys and the explicit support of `code`.
    pub fn publish(&self, code: &SparseCode) -> Result<Derived> {
        Ok(ambiguate_derived(code, &self.master, &self.context, &self.tables)?)
    }

    /// Whether the model's manifest has fitted tables (else generic ones).
    pub fn tables_fitted(&self) -> bool {
        self.tables.is_fitted()
    }

    /// Whether its fakes are drawn conditioned on each map's scale (the manifest's `scale_tables`).
    pub fn scale_conditioned(&self) -> bool {
        self.tables.is_scale_conditioned()
    }
}
