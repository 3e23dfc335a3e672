//! A BatchNorm2d site: torch.nn.BatchNorm2d (over every rank's batch with `--sync-bn`, see
//! sync_bn.rs), optionally with timm's split BatchNorm (`--split-bn`, timm's SplitBatchNorm2d
//! from `convert_splitbn_model`): in training, a batch of `splits` equal splits (AugMix's clean
//! split first) normalises the first split with the main BN and split i with auxiliary BN i - 1
//! (`aux_bn.{i-1}`), each with its own statistics and affine parameters; evaluation uses the main
//! BN alone, so the network it evaluates is a plain ResNet's.

pub use super::sync_bn::BnSettings;
use tch::nn;
use tch::Tensor;

#[derive(Debug)]
pub struct BatchNorm {
    pub main: nn::BatchNorm,
    /// timm's `aux_bn`: one per augmented split; empty without split BN.
    pub aux: Vec<nn::BatchNorm>,
    /// What `main` and `aux` were built with (tch keeps its copy private; the synchronised and
    /// fused paths need it).
    pub settings: BnSettings,
}

impl BatchNorm {
    /// torchvision's BatchNorm2d init (gamma 1, or 0 with `zero_gamma`; beta 0); `splits` >= 2
    /// adds `splits - 1` auxiliary BNs initialised alike (timm copies the main BN into them).
    pub fn new(vs: nn::Path, c: i64, zero_gamma: bool, splits: usize, settings: BnSettings) -> Self {
        let make = |vs: nn::Path| {
            let cfg = nn::BatchNormConfig {
                ws_init: nn::Init::Const(if zero_gamma { 0.0 } else { 1.0 }),
                bs_init: nn::Init::Const(0.0),
                momentum: settings.momentum,
                eps: settings.eps,
                ..Default::default()
            };
            nn::batch_norm2d(vs, c, cfg)
        };
        let aux = (1..splits.max(1)).map(|i| make(&vs / "aux_bn" / (i - 1))).collect();
        Self { main: make(vs), aux, settings }
    }

    /// Whether this forward normalises split by split (training with auxiliary BNs on a batch
    /// that divides into the splits; any other batch goes through the main BN, as in eval).
    pub fn splits_batch(&self, x: &Tensor, train: bool) -> bool {
        let splits = self.aux.len() as i64 + 1;
        train && splits > 1 && x.size()[0] % splits == 0
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if !self.splits_batch(x, train) {
            return super::sync_bn::batch_norm(&self.main, self.settings, x, train);
        }
        let n = x.size()[0] / (self.aux.len() as i64 + 1);
        let parts = x.split(n, 0);
        let normed: Vec<Tensor> = std::iter::once(&self.main)
            .chain(&self.aux)
            .zip(&parts)
            .map(|(bn, part)| super::sync_bn::batch_norm(bn, self.settings, part, train))
            .collect();
        Tensor::cat(&normed, 0)
    }
}
