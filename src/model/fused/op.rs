//! The seam between a fused kernel and candle's custom ops. A kernel implements [`FusedOp`]
//! on plain f32 data; [`KernelOp`] makes it candle's `CustomOp1/2/3`, so the storage plumbing
//! (CPU storage to contiguous slices, the result back into `CpuStorage::F32`) and the
//! trait's signatures are written once here, not once per kernel.

use super::slice;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

/// One input of a kernel's forward: its contiguous f32 data and its layout.
pub(crate) struct Input<'a> {
    pub data: &'a [f32],
    pub layout: &'a Layout,
}

impl Input<'_> {
    pub fn dims(&self) -> &[usize] {
        self.layout.dims()
    }
}

/// The gradients of a kernel's `N` inputs (None where it has none).
pub(crate) type Grads<const N: usize> = Result<[Option<Tensor>; N]>;

/// A fused kernel of `N` f32 inputs with its analytic backward.
pub(crate) trait FusedOp<const N: usize>: Send + Sync {
    /// The op's name in candle's graph.
    const NAME: &'static str;
    /// The output's data and shape from the inputs.
    fn cpu_fwd(&self, inputs: [Input<'_>; N]) -> Result<(Vec<f32>, Shape)>;
    /// The inputs' gradients given the forward's output `res` and its gradient `grad`.
    fn bwd(&self, inputs: [&Tensor; N], res: &Tensor, grad: &Tensor) -> Grads<N>;
}

/// A kernel as a candle op: `x.apply_op2(&w, KernelOp(kernel))`.
pub(crate) struct KernelOp<K>(pub K);

/// `impl CustomOpN for KernelOp<K>` for one arity: candle has a trait per arity, which no
/// generic can range over, so the three impls come from this one template.
macro_rules! custom_op {
    ($op:ident, $n:literal, $out:ty, $(($s:ident, $l:ident, $t:ident)),+) => {
        impl<K: FusedOp<$n>> $op for KernelOp<K> {
            fn name(&self) -> &'static str {
                K::NAME
            }

            fn cpu_fwd(&self, $($s: &CpuStorage, $l: &Layout),+) -> Result<(CpuStorage, Shape)> {
                let inputs = [$(Input { data: slice($s, $l)?, layout: $l }),+];
                let (y, shape) = self.0.cpu_fwd(inputs)?;
                Ok((CpuStorage::F32(y), shape))
            }

            fn bwd(&self, $($t: &Tensor,)+ res: &Tensor, grad: &Tensor) -> Result<$out> {
                let [$($t),+] = self.0.bwd([$($t),+], res, grad)?;
                Ok(($($t),+))
            }
        }
    };
}

custom_op!(CustomOp1, 1, Option<Tensor>, (s1, l1, a));
custom_op!(
    CustomOp2,
    2,
    (Option<Tensor>, Option<Tensor>),
    (s1, l1, a),
    (s2, l2, b)
);
custom_op!(
    CustomOp3,
    3,
    (Option<Tensor>, Option<Tensor>, Option<Tensor>),
    (s1, l1, a),
    (s2, l2, b),
    (s3, l3, c)
);
