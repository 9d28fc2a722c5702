//! The device ring's memory: an [`ExportedMemory`] (a `cuMemCreate` allocation another process
//! maps through its POSIX descriptor) under the ring's slot states, slot `k` at
//! `k × slot_bytes`; its length is `slot_bytes × depth` rounded up to the device's allocation
//! granularity ([`crate::Opened::ring_bytes`]).

use std::os::fd::OwnedFd;

use loaderd_gpu::{DeviceSliceMut, ExportedMemory};

use crate::ring::{RingError, SlotMemory, SlotWriter};

impl SlotMemory for ExportedMemory {
    fn len(&self) -> usize {
        ExportedMemory::len(self)
    }

    fn descriptor(&self) -> Result<OwnedFd, RingError> {
        Ok(self.export_fd()?)
    }
}

impl SlotWriter<'_, ExportedMemory> {
    /// The slot as the output of a GPU batch.
    pub fn device(&mut self) -> DeviceSliceMut<'_> {
        let range = self.range();
        // SAFETY: the slot is in state Filling, which only this writer holds: no other writer
        // gets it and the client is not given it before `publish`; `&mut self` keeps the view
        // unique within this process; the client only reads a slot after it is delivered.
        unsafe { self.memory().slice_mut(range) }
    }
}
