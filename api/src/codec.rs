//! The codec every mesh gRPC stream uses: protobuf (prost), with small buffers. The
//! control plane's streams are many and their messages small (a policy, a few
//! endpoints): tonic's default of 8 KiB per stream and direction made one watched
//! service cost a proxy and the controller 16 KiB each before any message arrived.
//! Buffers still grow for a larger message.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Bytes a stream's encode or decode buffer starts with.
pub const BUFFER_BYTES: usize = 1024;
/// Bytes encoded before a stream yields to others (tonic's default).
const YIELD_BYTES: usize = 32 * 1024;

/// Protobuf over gRPC with [`BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for SmallCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_BYTES, YIELD_BYTES))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_BYTES, YIELD_BYTES))
    }
}
