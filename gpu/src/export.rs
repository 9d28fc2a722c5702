//! Device memory another process can map: the device ring's batch slots.
//!
//! [`ExportedMemory`] is one allocation made with the driver's virtual memory management API:
//! `cuMemCreate` (pinned device memory, `requestedHandleTypes = POSIX_FILE_DESCRIPTOR`), mapped
//! into this process with `cuMemAddressReserve` + `cuMemMap` + `cuMemSetAccess` (read-write for
//! the device). [`ExportedMemory::export_fd`] gives a POSIX file descriptor for it
//! (`cuMemExportToShareableHandle`), which the daemon sends with the OpenLoader reply over
//! SCM_RIGHTS; the client maps it with `cuMemImportFromShareableHandle`, `cuMemAddressReserve`,
//! `cuMemMap` and `cuMemSetAccess`, then `cuMemRelease`s its handle (the mapping keeps the
//! memory). [`ImportedMemory`] is that importer side, in Rust. cudarc's stream-ordered pool
//! (`cuMemAllocAsync`) is not exportable, which is why this is not a [`crate::DeviceBuffer`].
//!
//! Lifetime: the physical memory lives while any handle, exported descriptor or mapping of it
//! exists, in any process. Dropping an [`ExportedMemory`] waits for the context's pending work,
//! then unmaps, frees the address range and releases the handle, in that order; an importer
//! that still maps it keeps reading valid memory until it unmaps.
//!
//! The driver structures these calls take (`cuda.h`, 12.x and 13.0/13.1; x86-64 and aarch64),
//! checked by the unit tests below, for the client's ctypes twins:
//!
//! | struct                | size | field offsets                                              |
//! |-----------------------|------|------------------------------------------------------------|
//! | `CUmemLocation`       | 8    | `type` 0 (u32 enum), `id` 4 (int)                          |
//! | `CUmemAccessDesc`     | 12   | `location` 0, `flags` 8 (u32 enum; READ = 1, READWRITE = 3) |
//! | `CUmemAllocationProp` | 32   | `type` 0 (u32; PINNED = 1), `requestedHandleTypes` 4 (u32; POSIX_FILE_DESCRIPTOR = 1), `location` 8, `win32HandleMetaData` 16 (pointer), `allocFlags` 24 (8 bytes: `compressionType` u8, `gpuDirectRDMACapable` u8, `usage` u16, `reserved` [u8; 4]) |
//!
//! `CU_MEM_LOCATION_TYPE_DEVICE` = 1, `CU_MEM_ALLOC_GRANULARITY_MINIMUM` = 0; the handle
//! (`CUmemGenericAllocationHandle`) is an unsigned 64-bit integer; for a POSIX descriptor the
//! `osHandle` argument of `cuMemImportFromShareableHandle` is the descriptor cast to a pointer,
//! and `cuMemExportToShareableHandle` writes an `int`.

use std::ffi::{c_int, c_void};
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use cudarc::driver::sys;

use crate::pinned::{GpuContext, H2dStream};
use crate::slice::{DeviceSliceMut, check_range, read_device};
use crate::{GpuDevice, GpuError};

/// Round `len` up to a multiple of `granularity`; `None` on overflow or a zero granularity.
pub fn round_up_to_granularity(len: usize, granularity: usize) -> Option<usize> {
    if granularity == 0 {
        return None;
    }
    len.checked_next_multiple_of(granularity)
}

/// The allocation properties of a device ring: pinned memory on device `ordinal`, exportable
/// as a POSIX file descriptor.
pub(crate) fn allocation_prop(ordinal: u32) -> Result<sys::CUmemAllocationProp, GpuError> {
    let id = c_int::try_from(ordinal)
        .map_err(|_| GpuError::InvalidArgument(format!("device ordinal {ordinal}")))?;
    Ok(sys::CUmemAllocationProp {
        type_: sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED,
        requestedHandleTypes:
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
        location: device_location(id),
        win32HandleMetaData: std::ptr::null_mut(),
        allocFlags: sys::CUmemAllocationProp_st__bindgen_ty_1 {
            compressionType: 0,
            gpuDirectRDMACapable: 0,
            usage: 0,
            reserved: [0; 4],
        },
    })
}

fn device_location(id: c_int) -> sys::CUmemLocation {
    sys::CUmemLocation {
        type_: sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE,
        id,
    }
}

/// The minimum allocation granularity of exportable memory on device `ordinal`; sizes of
/// [`ExportedMemory`] are multiples of it (2 MiB on current GPUs).
pub(crate) fn allocation_granularity(ctx: &GpuContext, ordinal: u32) -> Result<usize, GpuError> {
    let prop = allocation_prop(ordinal)?;
    ctx.bind()?;
    let mut granularity = 0usize;
    // SAFETY: valid out-pointer and a fully initialized property struct.
    unsafe {
        sys::cuMemGetAllocationGranularity(
            &mut granularity,
            &prop,
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
        )
    }
    .result()
    .map_err(GpuError::driver("cuMemGetAllocationGranularity"))?;
    if granularity == 0 {
        return Err(GpuError::InvalidArgument(
            "the driver reports an allocation granularity of 0".into(),
        ));
    }
    Ok(granularity)
}

/// An allocation handle and its mapping in this process, undone step by step on drop: wait
/// for the context, unmap, free the address range, release the handle.
#[derive(Debug)]
struct Vmm {
    ctx: GpuContext,
    len: usize,
    handle: Option<sys::CUmemGenericAllocationHandle>,
    va: Option<sys::CUdeviceptr>,
    mapped: bool,
}

impl Vmm {
    fn new(ctx: &GpuContext, len: usize, handle: sys::CUmemGenericAllocationHandle) -> Self {
        Vmm {
            ctx: ctx.clone(),
            len,
            handle: Some(handle),
            va: None,
            mapped: false,
        }
    }

    /// Reserves an address range, maps the handle there and grants `flags` access to device
    /// `ordinal`. On error, `Drop` undoes what was done.
    fn map(&mut self, ordinal: u32, flags: sys::CUmemAccess_flags) -> Result<(), GpuError> {
        let handle = self
            .handle
            .ok_or_else(|| GpuError::InvalidArgument("no allocation handle to map".into()))?;
        let id = c_int::try_from(ordinal)
            .map_err(|_| GpuError::InvalidArgument(format!("device ordinal {ordinal}")))?;
        self.ctx.bind()?;
        let mut va: sys::CUdeviceptr = 0;
        // SAFETY: valid out-pointer; alignment 0 and address 0 ask for the defaults.
        unsafe { sys::cuMemAddressReserve(&mut va, self.len, 0, 0, 0) }
            .result()
            .map_err(GpuError::driver("cuMemAddressReserve"))?;
        self.va = Some(va);
        // SAFETY: `va..va+len` was just reserved for this mapping; `handle` is a live
        // allocation of (at least, for an import: exactly as the exporter said) `len` bytes.
        unsafe { sys::cuMemMap(va, self.len, 0, handle, 0) }
            .result()
            .map_err(GpuError::driver("cuMemMap"))?;
        self.mapped = true;
        let desc = sys::CUmemAccessDesc {
            location: device_location(id),
            flags,
        };
        // SAFETY: `va..va+len` is mapped (above); `desc` is one initialized descriptor.
        unsafe { sys::cuMemSetAccess(va, self.len, &desc, 1) }
            .result()
            .map_err(GpuError::driver("cuMemSetAccess"))
    }

    /// The mapped address; only called once `map` succeeded.
    fn ptr(&self) -> sys::CUdeviceptr {
        self.va.unwrap_or(0)
    }

    /// Releases the handle now (an importer does once mapped: the mapping keeps the memory).
    fn release_handle(&mut self) -> Result<(), GpuError> {
        if let Some(handle) = self.handle.take() {
            self.ctx.bind()?;
            // SAFETY: `handle` came from cuMemCreate / cuMemImportFromShareableHandle and is
            // released exactly once (taken out of `self`).
            unsafe { sys::cuMemRelease(handle) }
                .result()
                .map_err(GpuError::driver("cuMemRelease"))?;
        }
        Ok(())
    }

    /// Undoes what was done, in order. A step that fails stops it: the rest is leaked rather
    /// than unmapped or freed under work that may still be running (a failed synchronize
    /// means the context is broken anyway).
    fn teardown(&mut self) -> Result<(), GpuError> {
        self.ctx.bind()?;
        if self.mapped {
            // Kernels and copies queued on any stream of the context may still use the range.
            self.ctx
                .cuda()
                .synchronize()
                .map_err(GpuError::driver("cuCtxSynchronize"))?;
            if let Some(va) = self.va {
                // SAFETY: `va..va+len` is mapped by us and no queued work uses it any more.
                unsafe { sys::cuMemUnmap(va, self.len) }
                    .result()
                    .map_err(GpuError::driver("cuMemUnmap"))?;
            }
            self.mapped = false;
        }
        if let Some(va) = self.va.take() {
            // SAFETY: the range was reserved by us and is no longer mapped.
            unsafe { sys::cuMemAddressFree(va, self.len) }
                .result()
                .map_err(GpuError::driver("cuMemAddressFree"))?;
        }
        self.release_handle()
    }

    /// A view of bytes `range`; same contract as [`ExportedMemory::slice_mut`].
    unsafe fn slice_mut(&self, range: Range<usize>) -> DeviceSliceMut<'_> {
        if let Err(e) = check_range(&range, self.len) {
            panic!("{e}");
        }
        // SAFETY: the range is inside the mapping (checked), which lives as long as `self`;
        // the caller guarantees no other live view overlaps it.
        unsafe { DeviceSliceMut::from_raw(self.ptr() + range.start as u64, range.len()) }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!(error = %e, len = self.len, "freeing device ring memory failed");
        }
    }
}

/// Device memory exportable to another process; see the module doc.
#[derive(Debug)]
pub struct ExportedMemory {
    vmm: Vmm,
    ordinal: u32,
}

impl ExportedMemory {
    /// At least `min_len` bytes (rounded up to the allocation granularity) on `device`,
    /// mapped read-write in this process. Contents are undefined until written.
    pub fn new(device: &GpuDevice, min_len: usize) -> Result<Self, GpuError> {
        let granularity = device.allocation_granularity();
        if min_len == 0 {
            return Err(GpuError::InvalidArgument(
                "cannot export an empty allocation".into(),
            ));
        }
        let len = round_up_to_granularity(min_len, granularity).ok_or_else(|| {
            GpuError::InvalidArgument(format!(
                "{min_len} bytes cannot be rounded up to the granularity {granularity}"
            ))
        })?;
        let ordinal = device.info().ordinal;
        let ctx = device.context();
        let prop = allocation_prop(ordinal)?;
        ctx.bind()?;
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        // SAFETY: valid out-pointer; `len` is a multiple of the granularity for `prop`.
        unsafe { sys::cuMemCreate(&mut handle, len, &prop, 0) }
            .result()
            .map_err(GpuError::driver("cuMemCreate"))?;
        let mut vmm = Vmm::new(ctx, len, handle);
        vmm.map(
            ordinal,
            sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        )?;
        tracing::debug!(ordinal, len, min_len, "exportable device memory allocated");
        Ok(ExportedMemory { vmm, ordinal })
    }

    /// Length in bytes (a multiple of the allocation granularity).
    pub fn len(&self) -> usize {
        self.vmm.len
    }

    /// Always false: empty allocations are refused.
    pub fn is_empty(&self) -> bool {
        self.vmm.len == 0
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> u32 {
        self.ordinal
    }

    /// The device address of the first byte in this process.
    pub fn device_ptr(&self) -> u64 {
        self.vmm.ptr()
    }

    /// A new POSIX file descriptor for the allocation (`cuMemExportToShareableHandle`), to
    /// send over SCM_RIGHTS; close-on-exec. Each call makes a new descriptor; the memory lives
    /// while any of them is open or any process maps it.
    pub fn export_fd(&self) -> Result<OwnedFd, GpuError> {
        let handle = self
            .vmm
            .handle
            .ok_or_else(|| GpuError::InvalidArgument("the allocation was released".into()))?;
        self.vmm.ctx.bind()?;
        let mut fd: c_int = -1;
        // SAFETY: for POSIX_FILE_DESCRIPTOR the driver writes one `int` to the out-pointer;
        // `handle` is our live allocation, created with that handle type requested.
        unsafe {
            sys::cuMemExportToShareableHandle(
                (&mut fd as *mut c_int).cast::<c_void>(),
                handle,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                0,
            )
        }
        .result()
        .map_err(GpuError::driver("cuMemExportToShareableHandle"))?;
        if fd < 0 {
            return Err(GpuError::InvalidArgument(format!(
                "cuMemExportToShareableHandle returned descriptor {fd}"
            )));
        }
        // SAFETY: the driver just opened `fd` for us; nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        set_cloexec(&owned)?;
        Ok(owned)
    }

    /// Bytes `range` as an output for a batch (see [`DeviceSliceMut`] for ordering).
    ///
    /// # Safety
    /// Like `loaderd_cache::arena::Arena::slice_mut`: the caller guarantees no other live
    /// slice overlaps `range` (the ring's slot states do), and that no other process writes
    /// it meanwhile.
    ///
    /// # Panics
    /// When `range` is not inside the allocation.
    pub unsafe fn slice_mut(&self, range: Range<usize>) -> DeviceSliceMut<'_> {
        // SAFETY: forwarded contract.
        unsafe { self.vmm.slice_mut(range) }
    }

    /// Copies bytes `range` to the host after `stream`'s queued work (blocking); for tests
    /// and diagnostics. Bytes never written read as whatever the memory held.
    pub fn read(&self, stream: &H2dStream, range: Range<usize>) -> Result<Vec<u8>, GpuError> {
        check_range(&range, self.len())?;
        read_device(stream, self.vmm.ptr() + range.start as u64, range.len())
    }
}

/// Sets `FD_CLOEXEC` so a descriptor meant for SCM_RIGHTS does not leak into children.
fn set_cloexec(fd: &OwnedFd) -> Result<(), GpuError> {
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
    let set = if flags < 0 {
        -1
    } else {
        // SAFETY: as above.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC) }
    };
    if set < 0 {
        return Err(GpuError::InvalidArgument(format!(
            "fcntl(FD_CLOEXEC) on an exported descriptor: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// The importer's side of [`ExportedMemory`]: another process's allocation, mapped here
/// read-write for one device. The handle is released as soon as it is mapped; dropping waits
/// for the context's work, then unmaps and frees the address range.
#[derive(Debug)]
pub struct ImportedMemory {
    vmm: Vmm,
}

impl ImportedMemory {
    /// Maps the allocation behind `fd` (from [`ExportedMemory::export_fd`]), `len` bytes (the
    /// exporter's [`ExportedMemory::len`]), on device `ordinal` of `ctx`. `fd` stays the
    /// caller's (the driver does not take it; close it whenever).
    pub fn import(
        ctx: &GpuContext,
        ordinal: u32,
        fd: BorrowedFd<'_>,
        len: usize,
    ) -> Result<Self, GpuError> {
        let granularity = allocation_granularity(ctx, ordinal)?;
        if len == 0 || !len.is_multiple_of(granularity) {
            return Err(GpuError::InvalidArgument(format!(
                "an imported allocation of {len} bytes is not a positive multiple of the \
                 granularity {granularity}"
            )));
        }
        ctx.bind()?;
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        let raw = fd.as_raw_fd();
        // SAFETY: valid out-pointer; for POSIX_FILE_DESCRIPTOR `osHandle` is the descriptor
        // itself cast to a pointer, and `fd` is open for the duration of the call.
        unsafe {
            sys::cuMemImportFromShareableHandle(
                &mut handle,
                raw as isize as *mut c_void,
                sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
            )
        }
        .result()
        .map_err(GpuError::driver("cuMemImportFromShareableHandle"))?;
        let mut vmm = Vmm::new(ctx, len, handle);
        vmm.map(
            ordinal,
            sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        )?;
        vmm.release_handle()?;
        Ok(ImportedMemory { vmm })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.vmm.len
    }

    /// Always false: empty imports are refused.
    pub fn is_empty(&self) -> bool {
        self.vmm.len == 0
    }

    /// Bytes `range` as a writable view.
    ///
    /// # Safety
    /// As [`ExportedMemory::slice_mut`]: no other live view overlaps `range`, and no other
    /// process writes it meanwhile.
    ///
    /// # Panics
    /// When `range` is not inside the mapping.
    pub unsafe fn slice_mut(&self, range: Range<usize>) -> DeviceSliceMut<'_> {
        // SAFETY: forwarded contract.
        unsafe { self.vmm.slice_mut(range) }
    }

    /// Copies bytes `range` to the host after `stream`'s queued work (blocking).
    pub fn read(&self, stream: &H2dStream, range: Range<usize>) -> Result<Vec<u8>, GpuError> {
        check_range(&range, self.len())?;
        read_device(stream, self.vmm.ptr() + range.start as u64, range.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn rounding_to_the_granularity() {
        let g = 2 << 20;
        assert_eq!(round_up_to_granularity(0, g), Some(0));
        assert_eq!(round_up_to_granularity(1, g), Some(g));
        assert_eq!(round_up_to_granularity(g, g), Some(g));
        assert_eq!(round_up_to_granularity(g + 1, g), Some(2 * g));
        assert_eq!(round_up_to_granularity(3 * g - 1, g), Some(3 * g));
        assert_eq!(round_up_to_granularity(10, 3), Some(12));
        assert_eq!(round_up_to_granularity(5, 0), None);
        assert_eq!(round_up_to_granularity(usize::MAX, g), None);
        assert_eq!(round_up_to_granularity(usize::MAX - g + 2, g), None);
        let top = usize::MAX - usize::MAX % g;
        assert_eq!(round_up_to_granularity(top, g), Some(top));
        assert_eq!(round_up_to_granularity(top - 1, g), Some(top));
    }

    /// The sizes and offsets of `cuda.h` (see the module doc's table).
    #[test]
    fn vmm_structs_match_the_header() {
        assert_eq!(size_of::<usize>(), 8, "the table is for 64-bit targets");
        assert_eq!(size_of::<sys::CUmemLocation>(), 8);
        assert_eq!(offset_of!(sys::CUmemLocation, type_), 0);
        assert_eq!(offset_of!(sys::CUmemLocation, id), 4);
        assert_eq!(size_of::<sys::CUmemAccessDesc>(), 12);
        assert_eq!(offset_of!(sys::CUmemAccessDesc, location), 0);
        assert_eq!(offset_of!(sys::CUmemAccessDesc, flags), 8);
        assert_eq!(size_of::<sys::CUmemAllocationProp>(), 32);
        assert_eq!(offset_of!(sys::CUmemAllocationProp, type_), 0);
        assert_eq!(
            offset_of!(sys::CUmemAllocationProp, requestedHandleTypes),
            4
        );
        assert_eq!(offset_of!(sys::CUmemAllocationProp, location), 8);
        assert_eq!(
            offset_of!(sys::CUmemAllocationProp, win32HandleMetaData),
            16
        );
        assert_eq!(offset_of!(sys::CUmemAllocationProp, allocFlags), 24);
        assert_eq!(size_of::<sys::CUmemAllocationProp_st__bindgen_ty_1>(), 8);
        assert_eq!(size_of::<sys::CUmemGenericAllocationHandle>(), 8);
        // The enum values the table names.
        use sys::CUmemAccess_flags::*;
        assert_eq!(CU_MEM_ACCESS_FLAGS_PROT_READ as u32, 1);
        assert_eq!(CU_MEM_ACCESS_FLAGS_PROT_READWRITE as u32, 3);
        assert_eq!(
            sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE as u32,
            1
        );
        assert_eq!(
            sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED as u32,
            1
        );
        assert_eq!(
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR.0,
            1
        );
        assert_eq!(
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM as u32,
            0
        );
    }

    #[test]
    fn the_allocation_prop_asks_for_an_exportable_device_allocation() {
        let p = allocation_prop(3).unwrap();
        assert_eq!(
            p.type_,
            sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED
        );
        assert_eq!(
            p.requestedHandleTypes,
            sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR
        );
        assert_eq!(
            p.location.type_,
            sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE
        );
        assert_eq!(p.location.id, 3);
        assert!(p.win32HandleMetaData.is_null());
        assert!(allocation_prop(u32::MAX).is_err());
    }
}
