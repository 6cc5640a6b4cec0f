//! Core library of ambishare: typed values, sparse codes and their ambiguation,
//! support keys, the versioned binary formats, signing and sealing, and the
//! ONNX model runner. No sockets live here.

pub mod ambiguate;
pub mod code;
pub mod combinatorics;
pub mod crypto;
pub mod derived;
pub mod entry;
pub mod error;
pub mod format;
pub mod ids;
pub mod key;
pub mod model;
pub mod pipeline;
pub mod quality;
pub mod tiling;
pub mod timestamp;

pub use ambiguate::{
    AmbiguatedCode, CodeVersion, FakeModel, FakeSigma, QuantizedValues, ValueCodec, ambiguate, random_guess,
};
pub use code::{CodeShape, SparseCode};
pub use derived::{
    Bands, DerivationContext, DerivedKey, EntryTag, FakeTables, FittedTables, MasterSecret, TableFitter,
    ambiguate_derived,
};
pub use entry::{Entry, EntrySummary};
pub use error::{Error, Result};
pub use ids::{DatasetName, DisplayName, EntryId, ModelId, OwnerId, PartyName, Tier};
pub use key::{EntryKey, SupportKey};
pub use model::{Device, Manifest, ModelRunner};
pub use tiling::TileGrid;
