//! Placeholder: the CUDA backend is being written (issue 4).
use super::*;
pub struct WgpuBackend;
impl WgpuBackend {
    pub fn open(_adapter: Option<&str>, _hardware_only: bool) -> Result<Self> {
        Err(Error::Unavailable {
            implementation: "wgpu",
            reason: "not written yet".into(),
        })
    }
}
impl Backend for WgpuBackend {
    fn implementation(&self) -> Implementation {
        Implementation::Wgpu
    }
    fn device(&self) -> DeviceInfo {
        unreachable!()
    }
    fn supports(&self, _: Layout) -> bool {
        unreachable!()
    }
    fn footprint(&self, _: u64, _: u64, _: usize) -> Footprint {
        unreachable!()
    }
    fn device_memory(&self) -> Option<u64> {
        unreachable!()
    }
    fn mode_note(&self, _: Mode) -> String {
        unreachable!()
    }
    fn prepare<'a>(
        &'a mut self,
        _: &Problem,
        _: Inputs<'a>,
        _: CacheFill<'_>,
    ) -> Result<Box<dyn Prepared + 'a>> {
        unreachable!()
    }
}
