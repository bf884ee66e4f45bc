//! Placeholder: the CUDA backend is being written (issue 3).
use super::*;
pub struct CudaBackend;
impl CudaBackend {
    pub fn open() -> Result<Self> {
        Err(Error::Unavailable {
            implementation: "cuda",
            reason: "not written yet".into(),
        })
    }
}
impl Backend for CudaBackend {
    fn implementation(&self) -> Implementation {
        Implementation::Cuda
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
