//! One device allocation per run, cut into named regions (design.md §4: parameters, gradients, Adam
//! moments, activations, scratch; no allocation inside the training step).
//!
//! [`ArenaPlan`] is plain host data (sizes, offsets, a printable table) and is built and tested without a
//! GPU; [`DeviceArena`] makes the one allocation and hands out typed [`Region`]s by name.

use super::runtime::{CudaDevice, DevBuf, DeviceMem};
use anyhow::{anyhow, bail, Context, Result};
use std::marker::PhantomData;

/// Every region starts on this boundary (covers float4 / 128-bit loads and cache-line alignment).
pub const REGION_ALIGN: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionPlan {
    pub name: String,
    /// Element type name, for the printed plan ("f32", "bf16", "u8", ...).
    pub dtype: &'static str,
    pub elem_size: usize,
    pub len: usize,
    pub offset: usize,
}

impl RegionPlan {
    pub fn bytes(&self) -> usize {
        self.len * self.elem_size
    }
}

/// The layout of an arena: named regions, each aligned to [`REGION_ALIGN`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArenaPlan {
    regions: Vec<RegionPlan>,
    total: usize,
}

fn type_label<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

impl ArenaPlan {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends region `name` of `len` elements of `T`. Names must be unique.
    pub fn add<T>(&mut self, name: &str, len: usize) -> Result<&mut Self> {
        if self.regions.iter().any(|r| r.name == name) {
            bail!("arena plan: region `{name}` declared twice");
        }
        let elem_size = std::mem::size_of::<T>();
        let offset = self.total.next_multiple_of(REGION_ALIGN);
        let bytes = len.checked_mul(elem_size).with_context(|| format!("arena plan: region `{name}` size overflows"))?;
        self.total = offset.checked_add(bytes).with_context(|| format!("arena plan: total size overflows at `{name}`"))?;
        self.regions.push(RegionPlan { name: name.to_string(), dtype: type_label::<T>(), elem_size, len, offset });
        Ok(self)
    }

    /// Bytes of the single allocation.
    pub fn total_bytes(&self) -> usize {
        self.total.next_multiple_of(REGION_ALIGN).max(REGION_ALIGN)
    }

    pub fn regions(&self) -> &[RegionPlan] {
        &self.regions
    }

    pub fn get(&self, name: &str) -> Option<&RegionPlan> {
        self.regions.iter().find(|r| r.name == name)
    }
}

fn human(bytes: usize) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.2} MiB", b / (1u64 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

impl std::fmt::Display for ArenaPlan {
    /// The plan as a table (printed with `--verbose`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = self.regions.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
        writeln!(f, "device arena: {} in {} regions", human(self.total_bytes()), self.regions.len())?;
        writeln!(f, "  {:<w$}  {:>5}  {:>14}  {:>11}  {:>14}", "region", "dtype", "elements", "size", "offset")?;
        for r in &self.regions {
            writeln!(f, "  {:<w$}  {:>5}  {:>14}  {:>11}  {:>14}", r.name, r.dtype, r.len, human(r.bytes()), r.offset)?;
        }
        Ok(())
    }
}

/// The allocation of an [`ArenaPlan`] on a device.
pub struct DeviceArena {
    plan: ArenaPlan,
    buffer: DevBuf<u8>,
    base: u64,
}

impl DeviceArena {
    /// Makes the one allocation (zero-filled). An out-of-memory error reports the plan's size and the
    /// device's free memory.
    pub fn allocate(dev: &CudaDevice, plan: ArenaPlan) -> Result<Self> {
        let bytes = plan.total_bytes();
        let buffer = dev.zeros::<u8>(bytes).map_err(|e| {
            let free = dev.free_memory().map(human).unwrap_or_else(|| "unknown".into());
            anyhow!("allocating the device arena ({}) on cuda:{} (free: {free}): {e:#}\n{plan}", human(bytes), dev.info().ordinal)
        })?;
        let base = buffer.device_address();
        Ok(DeviceArena { plan, buffer, base })
    }

    pub fn plan(&self) -> &ArenaPlan {
        &self.plan
    }

    /// The size of the allocation.
    pub fn bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Region `name` typed as `T` (which must have the element size it was planned with).
    pub fn region<T>(&self, name: &str) -> Result<Region<'_, T>> {
        let r = self.plan.get(name).with_context(|| format!("device arena has no region `{name}`"))?;
        if r.elem_size != std::mem::size_of::<T>() {
            bail!("device arena region `{name}` holds {}-byte {} elements, not {}", r.elem_size, r.dtype, type_label::<T>());
        }
        Ok(Region { address: self.base + r.offset as u64, len: r.len, _arena: PhantomData })
    }
}

/// A typed window into a [`DeviceArena`]; valid while the arena lives. Kernels write through it from
/// `&self` because the memory is the device's, not Rust's: ordering is the stream's.
#[derive(Clone, Copy, Debug)]
pub struct Region<'a, T> {
    address: u64,
    len: usize,
    _arena: PhantomData<&'a [T]>,
}

impl<T> Region<'_, T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T> DeviceMem<T> for Region<'_, T> {
    fn device_address(&self) -> u64 {
        self.address
    }
    fn elements(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_aligns_and_sums() {
        let mut p = ArenaPlan::new();
        p.add::<f32>("params", 1000).unwrap().add::<u8>("mask", 1000).unwrap().add::<f64>("norm_partials", 3).unwrap();
        let r = p.regions();
        assert_eq!((r[0].offset, r[0].bytes()), (0, 4000));
        assert_eq!(r[1].offset, 4096);
        assert_eq!(r[2].offset, 5120);
        assert_eq!(p.total_bytes(), 5376);
        assert!(p.regions().iter().all(|r| r.offset % REGION_ALIGN == 0));
        let table = p.to_string();
        assert!(table.contains("params") && table.contains("f32") && table.contains("mask"), "{table}");
        assert!(p.add::<f32>("params", 1).is_err());
    }
}
