//! ResNet-18/34/50/101/152 (v1.5: the stride sits on the 3x3 conv), with torchvision's parameter
//! names and one activation module per site, as `PolyResNet` in `../shared/reference/polycom.py`:
//! `act1` after the stem, `layerX.Y.act1/act2/act3` in bottlenecks (`act1/act2` in basic blocks),
//! the last one applied after the residual add.

use super::activation::{ActConfig, Activation, Consumer};
use super::batch_norm::{BatchNorm, BnSettings};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
    Resnet152,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::Resnet152 => "resnet152",
        }
    }

    /// Blocks per stage.
    pub fn layers(self) -> [usize; 4] {
        match self {
            Arch::Resnet18 => [2, 2, 2, 2],
            Arch::Resnet34 => [3, 4, 6, 3],
            Arch::Resnet50 => [3, 4, 6, 3],
            Arch::Resnet101 => [3, 4, 23, 3],
            Arch::Resnet152 => [3, 8, 36, 3],
        }
    }

    pub fn bottleneck(self) -> bool {
        !matches!(self, Arch::Resnet18 | Arch::Resnet34)
    }

    pub fn all() -> [Arch; 5] {
        [Arch::Resnet18, Arch::Resnet34, Arch::Resnet50, Arch::Resnet101, Arch::Resnet152]
    }
}

/// Everything that defines the network's shape and initial values. Saved in checkpoints.
/// More classes than any classification dataset has (ImageNet-21k: 21,841); a ResNet-50 head
/// this wide is already 8 GB. A metadata value beyond it is an error, not an allocation.
pub const MAX_CLASSES: i64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    pub arch: Arch,
    pub act: ActConfig,
    pub num_classes: i64,
    /// Zero-init each block's last BN gamma, so every residual block starts as the identity.
    #[serde(default)]
    pub zero_init_residual: bool,
    /// 3x3 stride-1 stem without max-pool, for inputs of 64 px and less.
    #[serde(default)]
    pub small_stem: bool,
    /// Stochastic depth (timm's `drop_path_rate`): in training, each sample's residual branch is
    /// dropped with a probability rising linearly over the blocks from 0 to this rate (the
    /// kept ones scaled by 1 / keep). No effect in evaluation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drop_path_rate: f64,
    /// DropBlock (timm's `drop_block_rate`; Ghiasi et al. 2018): in training, contiguous square
    /// regions of every channel are zeroed after the BN before each block's middle activation
    /// (bottleneck: bn2; basic: bn1) in stages 3 and 4, with timm's block sizes 5 and 3 and seed
    /// scales 0.25 and 1 (see `drop_block`). No effect in evaluation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drop_block_rate: f64,
    /// Dropout on the pooled features before the classifier (timm's `drop_rate`). No effect in
    /// evaluation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drop_rate: f64,
    /// FFCV's BlurPool (`use_blurpool`; Zhang 2019, "Making convolutional networks shift-invariant
    /// again"): every convolution with stride > 1 and at least 16 input channels first blurs its
    /// input with the fixed 3x3 binomial filter [1 2 1]^T [1 2 1] / 16 (depthwise, stride 1,
    /// zero padding 1). In ResNets: the strided 3x3 (bottleneck conv2, basic conv1) and the
    /// projection shortcut of each stage's first block; not the stem (3 input channels). The
    /// filter is a constant, not a parameter: the weights keep torchvision's names and shapes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub blurpool: bool,
    /// timm's split BatchNorm (`split_bn` with `aug_splits`): every BN site gets this many - 1
    /// auxiliary BNs (`aux_bn.N`) for AugMix's augmented splits, used in training only (see
    /// batch_norm.rs); 0 or 1: none.
    #[serde(default, skip_serializing_if = "no_splits")]
    pub bn_splits: usize,
    /// Every BN's running-statistics momentum (timm's `bn_momentum`); None: torch's 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bn_momentum: Option<f64>,
    /// Every BN's variance epsilon (timm's `bn_eps`); None: torch's 1e-5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bn_eps: Option<f64>,
}

fn no_splits(n: &usize) -> bool {
    *n <= 1
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// FFCV's rule for which convolutions BlurPool wraps.
fn blurs(blurpool: bool, c_in: i64, stride: i64) -> bool {
    blurpool && stride > 1 && c_in >= 16
}

/// timm's `drop_path`: each sample of `x` (dim 0) is zeroed with probability `p`, the others
/// divided by 1 - p, so the expectation is unchanged. Draws from libtorch's generator (the trainer
/// seeds it per step, so runs resume exactly).
pub fn drop_path(x: &Tensor, p: f64) -> Tensor {
    if p <= 0.0 {
        return x.shallow_clone();
    }
    let keep = 1.0 - p;
    let mut shape = vec![1i64; x.dim()];
    shape[0] = x.size()[0];
    let mask = Tensor::empty(shape.as_slice(), (x.kind(), x.device())).bernoulli_float_(keep);
    x * (mask / keep)
}

/// timm's DropBlock settings of a stage (`drop_blocks` in timm/models/resnet.py): block size
/// and seed-rate scale for stages 3 and 4; none for stages 1 and 2.
pub fn drop_block_of_stage(stage: usize) -> Option<(i64, f64)> {
    match stage {
        2 => Some((5, 0.25)),
        3 => Some((3, 1.0)),
        _ => None,
    }
}

/// timm's `drop_block_2d` (v1.0.31; channels coupled, no noise, kept values rescaled): block
/// centres are drawn per sample and position with the rate `drop_block_gamma`, grown to
/// `block_size` squares and applied by `drop_blocks_at`. Draws one [N, 1, H, W] tensor from
/// libtorch's generator with `bernoulli_`, as timm does.
pub fn drop_block(x: &Tensor, drop_prob: f64, block_size: i64, gamma_scale: f64) -> Tensor {
    if drop_prob <= 0.0 {
        return x.shallow_clone();
    }
    let (b, h, w) = (x.size()[0], x.size()[2], x.size()[3]);
    let gamma = drop_block_gamma(h, w, drop_prob, block_size, gamma_scale);
    let centres =
        tch::no_grad(|| Tensor::empty([b, 1, h, w], (x.kind(), x.device())).bernoulli_float_(gamma));
    drop_blocks_at(x, &centres, block_size)
}

/// DropBlock's seed rate: the share of positions that start a block so that about `drop_prob`
/// of an H x W map falls in one (timm's expression and order, so the same double).
pub fn drop_block_gamma(h: i64, w: i64, drop_prob: f64, block_size: i64, gamma_scale: f64) -> f64 {
    let (kh, kw) = (block_size.min(h), block_size.min(w));
    gamma_scale * drop_prob * h as f64 * w as f64 / (kh * kw) as f64 / ((h - kh + 1) * (w - kw + 1)) as f64
}

/// `x` with a `block_size` square (clipped to the map) zeroed in every channel around each 1 of
/// `centres` ([N, 1, H, W], 0/1 in x's type) by a stride-1 max pool, the rest scaled by
/// positions / kept positions.
pub fn drop_blocks_at(x: &Tensor, centres: &Tensor, block_size: i64) -> Tensor {
    let (h, w) = (x.size()[2], x.size()[3]);
    let (kh, kw) = (block_size.min(h), block_size.min(w));
    tch::no_grad(|| {
        let mut blocks = centres.max_pool2d([kh, kw], [1, 1], [kh / 2, kw / 2], [1, 1], false);
        // An even size pools to one more row/column: drop the first, as timm does.
        if kh % 2 == 0 || kw % 2 == 0 {
            blocks = blocks.narrow(2, (kh + 1) % 2, h).narrow(3, (kw + 1) % 2, w);
        }
        let keep = blocks.neg() + 1.0; // 0 or 1: exact
        let scale =
            (keep.to_kind(tch::Kind::Float).sum(tch::Kind::Float) + 1e-7).reciprocal() * keep.numel() as f64;
        keep * scale.to_kind(x.kind())
    }) * x
}

impl ResNetConfig {
    pub fn new(arch: Arch, act: ActConfig) -> Self {
        Self {
            arch,
            act,
            num_classes: 1000,
            zero_init_residual: false,
            small_stem: false,
            drop_path_rate: 0.0,
            drop_block_rate: 0.0,
            drop_rate: 0.0,
            blurpool: false,
            bn_splits: 0,
            bn_momentum: None,
            bn_eps: None,
        }
    }

    /// The momentum and epsilon every BN of the network is built with.
    pub fn bn_settings(&self) -> BnSettings {
        let torch = BnSettings::default();
        BnSettings {
            momentum: self.bn_momentum.unwrap_or(torch.momentum),
            eps: self.bn_eps.unwrap_or(torch.eps),
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.act.validate()?;
        if !(1..=MAX_CLASSES).contains(&self.num_classes) {
            return Err(Error::Usage(format!(
                "--num-classes must be in 1..={MAX_CLASSES}, got {}",
                self.num_classes
            )));
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return Err(Error::Usage(format!("--drop-path must be in [0, 1), got {}", self.drop_path_rate)));
        }
        if !(0.0..1.0).contains(&self.drop_block_rate) {
            return Err(Error::Usage(format!(
                "--drop-block must be in [0, 1), got {}",
                self.drop_block_rate
            )));
        }
        if !(0.0..1.0).contains(&self.drop_rate) {
            return Err(Error::Usage(format!("--drop must be in [0, 1), got {}", self.drop_rate)));
        }
        if let Some(m) = self.bn_momentum {
            if !(0.0..=1.0).contains(&m) {
                return Err(Error::Usage(format!("--bn-momentum must be in [0, 1], got {m}")));
            }
        }
        if let Some(eps) = self.bn_eps {
            if !(eps > 0.0 && eps.is_finite()) {
                return Err(Error::Usage(format!("--bn-eps must be a positive number, got {eps}")));
            }
        }
        if self.bn_splits > 8 {
            return Err(Error::Usage(format!(
                "split BatchNorm takes at most 8 splits, got {}",
                self.bn_splits
            )));
        }
        Ok(())
    }

    /// Each block's drop-path probability, in forward order: timm's linear rule
    /// `rate * i / (blocks - 1)` over all blocks of the network.
    pub fn drop_path_rates(&self) -> Vec<f64> {
        let n: usize = self.arch.layers().iter().sum();
        (0..n).map(|i| self.drop_path_rate * i as f64 / (n.max(2) - 1) as f64).collect()
    }

    /// Names of the activation sites in forward order (`act1`, `layer1.0.act1`, ...).
    pub fn activation_sites(&self) -> Vec<String> {
        let per_block = if self.arch.bottleneck() { 3 } else { 2 };
        let mut sites = vec!["act1".to_string()];
        for (stage, &blocks) in self.arch.layers().iter().enumerate() {
            for block in 0..blocks {
                for a in 1..=per_block {
                    sites.push(format!("layer{}.{block}.act{a}", stage + 1));
                }
            }
        }
        sites
    }

    /// The learned polynomial of every PolyReLU/PolyNorm site in forward order (none for ReLU),
    /// read in one transfer from the tensors `tensor(name)` gives under the model files' names
    /// (`act1.weight`, `layer1.0.act3.bias`, ...).
    pub fn act_coefficients(&self, tensor: &dyn Fn(&str) -> Option<Tensor>) -> Result<Vec<SiteCoefficients>> {
        if self.act.kind == super::activation::ActKind::Relu {
            return Ok(Vec::new());
        }
        let sites = self.activation_sites();
        let mut parts = Vec::with_capacity(2 * sites.len());
        for site in &sites {
            for p in ["weight", "bias"] {
                let name = format!("{site}.{p}");
                let t = tensor(&name).ok_or_else(|| Error::Usage(format!("no tensor {name}")))?;
                parts.push(t.detach().to_kind(tch::Kind::Double).flatten(0, -1));
            }
        }
        // One device-to-host copy for all sites (every monitored step on a GPU).
        let values: Vec<f64> = Vec::try_from(Tensor::cat(&parts, 0).to_device(tch::Device::Cpu))?;
        let k = self.act.order as usize;
        if values.len() != sites.len() * (k + 1) {
            return Err(Error::Usage(format!(
                "{} coefficients for {} sites of order {k}: expected {}",
                values.len(),
                sites.len(),
                sites.len() * (k + 1)
            )));
        }
        Ok(sites
            .into_iter()
            .zip(values.chunks(k + 1))
            .map(|(site, v)| SiteCoefficients { site, weight: v[..k].to_vec(), bias: v[k] })
            .collect())
    }
}

/// One activation site's learned polynomial: y = bias + Σ_i weight[i] · term_i(x), the terms
/// relu(x)^i (PolyReLU) or the normalised x^i (PolyNorm), i = 1..=k.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteCoefficients {
    pub site: String,
    pub weight: Vec<f64>,
    pub bias: f64,
}

/// What one image costs a forward pass, counted from the architecture (no tensors).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardCost {
    /// Multiply-accumulates of the convolutions and the classifier (the "FLOPs" of the
    /// literature: 4.1 G for ResNet-50 at 224 px, 1.8 G for ResNet-18).
    pub macs: f64,
    /// Elements passing through the activation sites (their inputs' sizes, summed).
    pub act_elements: f64,
}

/// Spatial size after a convolution or pooling window.
fn out_size(size: i64, k: i64, stride: i64, pad: i64) -> i64 {
    (size + 2 * pad - k) / stride + 1
}

impl ResNetConfig {
    /// Forward cost of one `res` x `res` image, walking the same shapes as `ResNet::new`.
    pub fn forward_cost(&self, res: i64) -> ForwardCost {
        let (mut macs, mut act) = (0.0f64, 0.0f64);
        let blurpool = self.blurpool;
        let mut conv = |size: i64, c_in: i64, c_out: i64, k: i64, stride: i64| -> i64 {
            if blurs(blurpool, c_in, stride) {
                macs += (size * size * c_in * 9) as f64; // the depthwise blur at the input's size
            }
            let out = out_size(size, k, stride, k / 2);
            macs += (out * out * c_out * c_in * k * k) as f64;
            out
        };
        let mut size = if self.small_stem { conv(res, 3, 64, 3, 1) } else { conv(res, 3, 64, 7, 2) };
        act += (64 * size * size) as f64;
        if !self.small_stem {
            size = out_size(size, 3, 2, 1); // max-pool
        }
        let mut c_in = 64;
        for (s, &blocks) in self.arch.layers().iter().enumerate() {
            let planes = 64 << s;
            for b in 0..blocks {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let specs: Vec<(i64, i64, i64, i64)> = if self.arch.bottleneck() {
                    vec![(c_in, planes, 1, 1), (planes, planes, 3, stride), (planes, planes * 4, 1, 1)]
                } else {
                    vec![(c_in, planes, 3, stride), (planes, planes, 3, 1)]
                };
                let c_out = specs.last().map_or(planes, |s| s.1);
                let block_in = size;
                for &(ci, co, k, st) in &specs {
                    size = conv(size, ci, co, k, st);
                    act += (co * size * size) as f64;
                }
                if stride != 1 || c_in != c_out {
                    conv(block_in, c_in, c_out, 1, stride);
                }
                c_in = c_out;
            }
        }
        macs += (c_in * self.num_classes) as f64;
        ForwardCost { macs, act_elements: act }
    }
}

/// A convolution, with FFCV's BlurPool in front of it when `blurs` says so.
#[derive(Debug)]
struct Conv {
    conv: nn::Conv2D,
    /// The [c_in, 1, 3, 3] binomial filter (float32 on the model's device; cast to the input's
    /// dtype when that differs, e.g. a float64 model).
    blur: Option<Tensor>,
}

impl Conv {
    fn new(vs: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64, blurpool: bool) -> Self {
        let blur = blurs(blurpool, c_in, stride).then(|| {
            let taps = Tensor::from_slice(&[1.0f32, 2.0, 1.0]).to_device(vs.device());
            let filter = taps.outer(&taps) / 16.0;
            filter.view([1, 1, 3, 3]).repeat([c_in, 1, 1, 1])
        });
        Self { conv: conv(vs, c_in, c_out, k, stride, padding), blur }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        match &self.blur {
            None => x.apply(&self.conv),
            Some(filter) => {
                let filter =
                    if filter.kind() == x.kind() { filter.shallow_clone() } else { filter.to_kind(x.kind()) };
                let groups = filter.size()[0];
                x.conv2d(&filter, None::<Tensor>, [1, 1], [1, 1], [1, 1], groups).apply(&self.conv)
            }
        }
    }
}

/// torchvision's conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu"), no bias.
fn conv(vs: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(vs, c_in, c_out, k, cfg)
}

/// The 1x1 conv + BN projection on the shortcut when shape changes (`downsample.0`, `downsample.1`).
#[derive(Debug)]
struct Downsample {
    conv: Conv,
    bn: BatchNorm,
}

impl Downsample {
    fn new(vs: nn::Path, cfg: &ResNetConfig, c_in: i64, c_out: i64, stride: i64) -> Self {
        Self {
            conv: Conv::new(&vs / "0", c_in, c_out, 1, stride, 0, cfg.blurpool),
            bn: BatchNorm::new(&vs / "1", c_out, false, cfg.bn_splits, cfg.bn_settings()),
        }
    }
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        self.bn.forward(&self.conv.forward(x), train)
    }
}

/// A basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1) residual block.
#[derive(Debug)]
struct Block {
    convs: Vec<Conv>,
    bns: Vec<BatchNorm>,
    /// One per conv; the last one is applied after the residual add.
    acts: Vec<Activation>,
    downsample: Option<Downsample>,
    /// Stochastic depth probability of this block's residual branch.
    drop_path: f64,
    /// DropBlock after the middle BN: (drop probability, block size, seed-rate scale).
    drop_block: Option<(f64, i64, f64)>,
}

impl Block {
    fn new(
        vs: nn::Path,
        cfg: &ResNetConfig,
        c_in: i64,
        planes: i64,
        stride: i64,
        drop_path: f64,
        drop_block: Option<(f64, i64, f64)>,
    ) -> (Self, i64) {
        let (specs, c_out): (Vec<(i64, i64, i64, i64)>, i64) = if cfg.arch.bottleneck() {
            // (in, out, kernel, stride) per conv; v1.5 puts the stride on the 3x3.
            (vec![(c_in, planes, 1, 1), (planes, planes, 3, stride), (planes, planes * 4, 1, 1)], planes * 4)
        } else {
            (vec![(c_in, planes, 3, stride), (planes, planes, 3, 1)], planes)
        };
        let n = specs.len();
        let mut convs = Vec::with_capacity(n);
        let mut bns = Vec::with_capacity(n);
        let mut acts = Vec::with_capacity(n);
        for (i, &(ci, co, k, s)) in specs.iter().enumerate() {
            convs.push(Conv::new(&vs / format!("conv{}", i + 1), ci, co, k, s, k / 2, cfg.blurpool));
            let zero_gamma = cfg.zero_init_residual && i == n - 1;
            bns.push(BatchNorm::new(
                &vs / format!("bn{}", i + 1),
                co,
                zero_gamma,
                cfg.bn_splits,
                cfg.bn_settings(),
            ));
            acts.push(Activation::new(&vs / format!("act{}", i + 1), cfg.act));
        }
        let downsample = (stride != 1 || c_in != c_out)
            .then(|| Downsample::new(&vs / "downsample", cfg, c_in, c_out, stride));
        (Self { convs, bns, acts, downsample, drop_path, drop_block }, c_out)
    }

    /// `inner`: what reads the inner sites' outputs (the next convolution, or also a monitor).
    fn forward(
        &self,
        x: &Tensor,
        train: bool,
        inner: Consumer,
        observe: &mut dyn FnMut(usize, &Tensor),
    ) -> Tensor {
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, train),
            None => x.shallow_clone(),
        };
        let n = self.convs.len();
        let mut out = x.shallow_clone();
        for i in 0..n {
            let z = self.convs[i].forward(&out);
            out = if let (true, Some((p, size, scale)), true) = (train, self.drop_block, i + 2 == n) {
                // timm: bn -> DropBlock -> activation, before the last conv.
                self.acts[i].forward_to(&drop_block(&self.bns[i].forward(&z, train), p, size, scale), inner)
            } else if i < n - 1 {
                self.acts[i].forward_bn(&self.bns[i], &z, None, train, inner)
            } else if train && self.drop_path > 0.0 {
                let branch = drop_path(&self.bns[i].forward(&z, train), self.drop_path);
                self.acts[i].forward(&(branch + &shortcut))
            } else {
                // The block's output: the next block's convolutions and its residual add read it.
                self.acts[i].forward_bn(&self.bns[i], &z, Some(&shortcut), train, Consumer::Any)
            };
            observe(i, &out);
        }
        out
    }
}

/// The network. Parameters live in the `nn::VarStore` it was built from, under torchvision's names.
#[derive(Debug)]
pub struct ResNet {
    cfg: ResNetConfig,
    conv1: Conv,
    bn1: BatchNorm,
    act1: Activation,
    stages: Vec<Vec<Block>>,
    fc: nn::Linear,
}

impl ResNet {
    pub fn new(vs: &nn::Path, cfg: ResNetConfig) -> Result<Self> {
        cfg.validate()?;
        let conv1 = if cfg.small_stem {
            Conv::new(vs / "conv1", 3, 64, 3, 1, 1, cfg.blurpool)
        } else {
            Conv::new(vs / "conv1", 3, 64, 7, 2, 3, cfg.blurpool)
        };
        let bn1 = BatchNorm::new(vs / "bn1", 64, false, cfg.bn_splits, cfg.bn_settings());
        let act1 = Activation::new(vs / "act1", cfg.act);
        let mut c_in = 64;
        let mut stages = Vec::with_capacity(4);
        let mut drop_rates = cfg.drop_path_rates().into_iter();
        for (s, &blocks) in cfg.arch.layers().iter().enumerate() {
            let planes = 64 << s;
            let layer = vs / format!("layer{}", s + 1);
            let mut stage = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let rate = drop_rates.next().unwrap_or(0.0);
                let drop_block = drop_block_of_stage(s)
                    .filter(|_| cfg.drop_block_rate > 0.0)
                    .map(|(size, scale)| (cfg.drop_block_rate, size, scale));
                let (block, c_out) = Block::new(&layer / b, &cfg, c_in, planes, stride, rate, drop_block);
                c_in = c_out;
                stage.push(block);
            }
            stages.push(stage);
        }
        // torch.nn.Linear's init: kaiming_uniform(a = sqrt(5)), i.e. U(+-1/sqrt(fan_in)) (tch's
        // default gain is ReLU's, sqrt(6) times larger); bias U(+-1/sqrt(fan_in)).
        let bound = 1.0 / (c_in as f64).sqrt();
        let fc_cfg = nn::LinearConfig {
            ws_init: nn::Init::Uniform { lo: -bound, up: bound },
            bs_init: Some(nn::Init::Uniform { lo: -bound, up: bound }),
            bias: true,
        };
        let fc = nn::linear(vs / "fc", c_in, cfg.num_classes, fc_cfg);
        Ok(Self { cfg, conv1, bn1, act1, stages, fc })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Changes how every activation site computes (clamp, fp32) without touching its parameters:
    /// the divergence guard's remedies, applied mid-run.
    pub fn set_act_compute(&mut self, clamp: Option<f64>, fp32: bool) {
        self.cfg.act.clamp = clamp;
        self.cfg.act.fp32 = fp32;
        let blocks = self.stages.iter_mut().flatten();
        for a in std::iter::once(&mut self.act1).chain(blocks.flat_map(|b| b.acts.iter_mut())) {
            a.set_compute(clamp, fp32);
        }
    }

    /// Logits for an NCHW float batch.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_sites(x, train, Consumer::Convolution, &mut |_, _| {})
    }

    /// Logits, calling `observe(site, output)` after every activation site, in forward order
    /// (the names of `ResNetConfig::activation_sites`). Used by the stability monitors, which
    /// see every site's output in the reference's type: fp32 under autocast with `act_fp32`
    /// (`forward_t` returns the blocks' inner sites in the autocast type, which only the next
    /// convolution reads; the same logits and gradients, bit for bit).
    pub fn forward_observed(
        &self,
        x: &Tensor,
        train: bool,
        observe: &mut dyn FnMut(&str, &Tensor),
    ) -> Tensor {
        self.forward_sites(x, train, Consumer::Any, observe)
    }

    fn forward_sites(
        &self,
        x: &Tensor,
        train: bool,
        inner: Consumer,
        observe: &mut dyn FnMut(&str, &Tensor),
    ) -> Tensor {
        // The stem's output goes to max pooling (whose backward picks one maximum per window: a
        // rounding could tie two) or, with the small stem, to the first residual add.
        let mut h = self.act1.forward_bn(&self.bn1, &self.conv1.forward(x), None, train, Consumer::Any);
        observe("act1", &h);
        if !self.cfg.small_stem {
            h = h.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                h = block.forward(&h, train, inner, &mut |a, t| {
                    observe(&format!("layer{}.{b}.act{}", s + 1, a + 1), t)
                });
            }
        }
        let pooled = h.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        // Dropout draws from libtorch's generator, which the trainer seeds per step (exact resume).
        let pooled =
            if train && self.cfg.drop_rate > 0.0 { pooled.dropout(self.cfg.drop_rate, true) } else { pooled };
        pooled.apply(&self.fc)
    }
}

/// Which optimiser parameter group a parameter belongs to (weight decay policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamGroup {
    /// Conv and fc weights: weight decay applies.
    Decay,
    /// BN gammas and betas: no weight decay by default (timm's; torchvision's
    /// `norm_weight_decay`).
    Norm,
    /// Other biases (the classifier's): no weight decay by default (timm's; torchvision's
    /// `bias_weight_decay`).
    Bias,
    /// PolyCom coefficients: their own group, no weight decay by default.
    Activation,
}

/// Classifies a parameter by its torchvision-style name and rank.
pub fn param_group(name: &str, shape: &[i64]) -> ParamGroup {
    let is_act =
        name.split('.').any(|seg| seg.starts_with("act") && seg[3..].chars().all(|c| c.is_ascii_digit()));
    if is_act {
        ParamGroup::Activation
    } else if shape.len() <= 1 && name.starts_with("fc.") {
        ParamGroup::Bias
    } else if shape.len() <= 1 {
        ParamGroup::Norm
    } else {
        ParamGroup::Decay
    }
}

/// Trainable parameter count of the model in `vs`.
pub fn count_params(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ActConfig, ActKind};

    /// torchvision's published GFLOPS (multiply-accumulates of convolutions and classifier) at
    /// 224 px: ResNet-18 1.81, ResNet-34 3.66, ResNet-50 4.09, ResNet-101 7.80, ResNet-152 11.51.
    #[test]
    fn forward_cost_matches_torchvision_and_counts_every_site() {
        for (arch, gmacs) in [
            (Arch::Resnet18, 1.81),
            (Arch::Resnet34, 3.66),
            (Arch::Resnet50, 4.09),
            (Arch::Resnet101, 7.80),
            (Arch::Resnet152, 11.51),
        ] {
            let cost = ResNetConfig::new(arch, ActConfig::new(ActKind::Relu, 1)).forward_cost(224);
            assert!((cost.macs / 1e9 - gmacs).abs() < 0.006, "{arch:?}: {} GMACs", cost.macs / 1e9);
        }
        // ResNet-18 at 224: the stem's 64x112x112, then 2 sites per block at 56, 28, 14, 7 px.
        let cost = ResNetConfig::new(Arch::Resnet18, ActConfig::new(ActKind::Relu, 1)).forward_cost(224);
        let want = 64 * 112 * 112 + 4 * (64 * 56 * 56 + 128 * 28 * 28 + 256 * 14 * 14 + 512 * 7 * 7);
        assert_eq!(cost.act_elements, want as f64);
    }
}
