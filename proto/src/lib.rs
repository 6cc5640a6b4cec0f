//! Generated gRPC services and messages of ambishare (see `proto/ambishare/`).

/// Values shared by every service.
pub mod types {
    pub mod v1 {
        tonic::include_proto!("ambishare.types.v1");
    }
}

/// The public registry service.
pub mod registry {
    pub mod v1 {
        tonic::include_proto!("ambishare.registry.v1");
    }
}

/// The owner's key service and admin service.
pub mod owner {
    pub mod v1 {
        tonic::include_proto!("ambishare.owner.v1");
    }
}

/// Encoded `FileDescriptorSet` of every ambishare proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ambishare_descriptor.bin"));
