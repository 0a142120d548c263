using EraserWorker.Core.Compute;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace EraserWorker.Models;

/// <summary>
/// Supplies the LoRA term of an adapted linear layer: <c>scaling · B(A(x))</c> for (layer, target), or null when the
/// module is not adapted. <paramref name="x"/> is [batch, tokens, in].
/// </summary>
public interface ILoraDelta
{
    Tensor? Delta(int layer, LoraTarget target, Tensor x);
}

/// <summary>
/// A LLaMA-family causal LM (LlamaForCausalLM semantics of Hugging Face transformers, eager attention) with frozen
/// weights held as tensors, and a functional forward pass into which a LoRA adapter is injected through
/// <see cref="ILoraDelta"/>. Computation is in <see cref="DType"/> (Float32, or Float64 for checks) whatever the
/// stored dtype; RMSNorm's variance and the attention softmax run in at least float32, as in transformers.
/// </summary>
public sealed class LlamaModel : IDisposable
{
    private readonly Tensor _embed;
    private readonly Tensor _lmHead;
    private readonly Tensor _finalNorm;
    private readonly Layer[] _layers;
    private readonly Tensor _invFreq;
    private bool _disposed;

    private sealed class Layer
    {
        public required Tensor InputNorm, PostNorm;
        public required Tensor[] Weights; // indexed by LoraTarget
        public required Tensor?[] Biases;
    }

    private LlamaModel(LlamaConfig config, ScalarType dtype, Device device, Tensor embed, Tensor lmHead, Tensor finalNorm, Layer[] layers)
    {
        Config = config;
        DType = dtype;
        Device = device;
        _embed = embed;
        _lmHead = lmHead;
        _finalNorm = finalNorm;
        _layers = layers;
        _invFreq = InverseFrequencies(config, device).DetachFromDisposeScope();
    }

    public LlamaConfig Config { get; }

    public ScalarType DType { get; }

    public Device Device { get; }

    /// <summary>Bytes held by the weights on the device.</summary>
    public long WeightBytes =>
        new[] { _embed, _finalNorm }.Concat(TiedEmbeddings ? [] : [_lmHead])
            .Concat(_layers.SelectMany(l => l.Weights.Concat(l.Biases.OfType<Tensor>()).Append(l.InputNorm).Append(l.PostNorm)))
            .Sum(t => t.NumberOfElements * t.ElementSize);

    public bool TiedEmbeddings => ReferenceEquals(_embed, _lmHead);

    /// <summary>Loads config.json and the safetensors weights of a Hugging Face model folder.</summary>
    /// <param name="precision">Float32 (default) or Float64 compute.</param>
    /// <param name="device">auto | cpu | cuda | cuda:N.</param>
    public static LlamaModel Load(string modelDirectory, ComputePrecision precision = ComputePrecision.Float32, string device = "cpu")
    {
        var config = LlamaConfig.Load(modelDirectory);
        var checkpoint = ModelCheckpoint.Open(modelDirectory);
        var dtype = ComputeDevice.ScalarType(precision);
        var dev = ComputeDevice.Resolve(device);
        var owned = new List<Tensor>();
        try
        {
            Tensor Get(string name, params long[] shape)
            {
                var stored = checkpoint.ShapeOf(name);
                if (!stored.SequenceEqual(shape))
                    throw new InvalidDataException($"Model '{modelDirectory}': '{name}' has shape [{string.Join(", ", stored)}]; config.json implies [{string.Join(", ", shape)}].");
                var t = checkpoint.Load(name, dtype, dev);
                owned.Add(t);
                return t;
            }
            var embed = Get("model.embed_tokens.weight", config.VocabSize, config.HiddenSize);
            Tensor lmHead;
            if (config.TieWordEmbeddings)
                lmHead = embed;
            else if (checkpoint.Contains("lm_head.weight"))
                lmHead = Get("lm_head.weight", config.VocabSize, config.HiddenSize);
            else
                throw new InvalidDataException($"Model '{modelDirectory}': no lm_head.weight and tie_word_embeddings is false.");
            var layers = new Layer[config.NumHiddenLayers];
            for (int i = 0; i < layers.Length; i++)
            {
                var weights = new Tensor[LoraTargets.All.Length];
                var biases = new Tensor?[LoraTargets.All.Length];
                foreach (var t in LoraTargets.All)
                {
                    var (input, output) = LoraTargets.Dimensions(config, t);
                    string path = LoraTargets.ModulePath(i, t);
                    weights[(int)t] = Get(path + ".weight", output, input);
                    bool hasBias = t <= LoraTarget.OProj
                        ? config.AttentionBias || (config.QkvBiasOnly && t != LoraTarget.OProj)
                        : config.MlpBias;
                    if (hasBias)
                        biases[(int)t] = Get(path + ".bias", output);
                }
                layers[i] = new Layer
                {
                    InputNorm = Get($"model.layers.{i}.input_layernorm.weight", config.HiddenSize),
                    PostNorm = Get($"model.layers.{i}.post_attention_layernorm.weight", config.HiddenSize),
                    Weights = weights,
                    Biases = biases,
                };
            }
            var norm = Get("model.norm.weight", config.HiddenSize);
            return new LlamaModel(config, dtype, dev, embed, lmHead, norm, layers);
        }
        catch
        {
            foreach (var t in owned)
                t.Dispose();
            throw;
        }
    }

    /// <summary>The final hidden states (after the last RMSNorm), [batch, tokens, hidden], for right-padded
    /// <paramref name="inputIds"/> [batch, tokens] (int64) at positions 0..tokens−1. With right padding and causal
    /// attention no real token sees a pad, so no attention mask is needed.</summary>
    public Tensor Hidden(Tensor inputIds, ILoraDelta? lora)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var c = Config;
        long batch = inputIds.shape[0], tokens = inputIds.shape[1];
        using var scope = torch.NewDisposeScope();
        var (cos, sin) = Rotary(tokens);
        var mask = CausalMask(tokens);
        var h = _embed.index_select(0, inputIds.reshape(-1)).view(batch, tokens, c.HiddenSize);
        int heads = c.NumAttentionHeads, kvHeads = c.NumKeyValueHeads, hd = c.HeadDim, groups = heads / kvHeads;
        double scaling = 1.0 / Math.Sqrt(hd);
        for (int i = 0; i < _layers.Length; i++)
        {
            var layer = _layers[i];
            var x = RmsNorm(h, layer.InputNorm);
            var q = Linear(i, LoraTarget.QProj, x, lora).view(batch, tokens, heads, hd).transpose(1, 2);
            var k = Linear(i, LoraTarget.KProj, x, lora).view(batch, tokens, kvHeads, hd).transpose(1, 2);
            var v = Linear(i, LoraTarget.VProj, x, lora).view(batch, tokens, kvHeads, hd).transpose(1, 2);
            q = (q * cos).Plus(RotateHalf(q) * sin);
            k = (k * cos).Plus(RotateHalf(k) * sin);
            if (groups > 1)
            {
                k = k.unsqueeze(2).expand(batch, kvHeads, groups, tokens, hd).reshape(batch, heads, tokens, hd);
                v = v.unsqueeze(2).expand(batch, kvHeads, groups, tokens, hd).reshape(batch, heads, tokens, hd);
            }
            var scores = q.matmul(k.transpose(2, 3)).Times(scaling);
            scores = scores.MaskedFill(mask, double.NegativeInfinity);
            var probabilities = DType == ScalarType.Float64 ? scores.softmax(-1) : scores.softmax(-1, ScalarType.Float32).to_type(DType);
            var attention = probabilities.matmul(v).transpose(1, 2).reshape(batch, tokens, heads * hd);
            h = h.Plus(Linear(i, LoraTarget.OProj, attention, lora));
            x = RmsNorm(h, layer.PostNorm);
            var gate = Linear(i, LoraTarget.GateProj, x, lora);
            var up = Linear(i, LoraTarget.UpProj, x, lora);
            h = h.Plus(Linear(i, LoraTarget.DownProj, F.silu(gate) * up, lora));
        }
        return RmsNorm(h, _finalNorm).MoveToOuterDisposeScope();
    }

    /// <summary>lm_head on hidden states [..., hidden] → logits [..., vocab].</summary>
    public Tensor Logits(Tensor hidden) => hidden.matmul(_lmHead.t());

    /// <summary>The full logits [batch, tokens, vocab] of <paramref name="inputIds"/>.</summary>
    public Tensor Forward(Tensor inputIds, ILoraDelta? lora)
    {
        using var scope = torch.NewDisposeScope();
        return Logits(Hidden(inputIds, lora)).MoveToOuterDisposeScope();
    }

    private Tensor Linear(int layer, LoraTarget target, Tensor x, ILoraDelta? lora)
    {
        var l = _layers[layer];
        var y = F.linear(x, l.Weights[(int)target], l.Biases[(int)target]);
        var delta = lora?.Delta(layer, target, x);
        return delta is null ? y : y.Plus(delta);
    }

    private Tensor RmsNorm(Tensor x, Tensor weight)
    {
        // transformers' LlamaRMSNorm: variance in float32, normalised value cast back before the weight.
        var wide = DType == ScalarType.Float64 ? x : x.to_type(ScalarType.Float32);
        var variance = wide.Square().mean([-1L], keepdim: true);
        var normalised = wide * torch.rsqrt(variance.Plus(Config.RmsNormEps));
        return weight * normalised.to_type(DType);
    }

    private static Tensor RotateHalf(Tensor x)
    {
        long half = x.shape[^1] / 2;
        return torch.cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
    }

    private (Tensor Cos, Tensor Sin) Rotary(long tokens)
    {
        // transformers: freqs = inv_freq ⊗ positions in float32; emb = cat(freqs, freqs); cos/sin cast to the model dtype.
        var wide = DType == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        var positions = ScalarArgs.Arange(tokens, wide, Device);
        if (Config.RopeScaling is { Type: "linear" } linear)
            positions = positions.Times(1.0 / linear.Factor);
        var freqs = positions.unsqueeze(1) * _invFreq.to_type(wide).unsqueeze(0);
        var emb = torch.cat([freqs, freqs], -1);
        return (emb.cos().to_type(DType), emb.sin().to_type(DType));
    }

    private Tensor CausalMask(long tokens)
    {
        var i = ScalarArgs.Arange(tokens, ScalarType.Int64, Device).unsqueeze(1);
        var j = ScalarArgs.Arange(tokens, ScalarType.Int64, Device).unsqueeze(0);
        var mask = j > i;
        if (Config.SlidingWindow is int window)
            mask = mask | (i - j).GreaterOrEqual(window);
        return mask;
    }

    /// <summary>inv_freq = 1 / θ^(2k/d) (float32, as transformers), with llama3 frequency scaling when configured.</summary>
    internal static Tensor InverseFrequencies(LlamaConfig c, Device device)
    {
        int dim = c.HeadDim;
        var inv = new double[dim / 2];
        for (int k = 0; k < inv.Length; k++)
        {
            float exponent = (float)(2 * k) / dim;
            inv[k] = (float)(1.0 / Math.Pow(c.RopeTheta, exponent));
        }
        if (c.RopeScaling is { Type: "llama3" } s)
        {
            double lowWavelen = s.OriginalMaxPositionEmbeddings / s.LowFreqFactor;
            double highWavelen = s.OriginalMaxPositionEmbeddings / s.HighFreqFactor;
            for (int k = 0; k < inv.Length; k++)
            {
                double wavelen = 2 * Math.PI / inv[k];
                if (wavelen > lowWavelen)
                    inv[k] /= s.Factor;
                else if (wavelen >= highWavelen)
                {
                    double smooth = (s.OriginalMaxPositionEmbeddings / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                    inv[k] = (1 - smooth) * inv[k] / s.Factor + smooth * inv[k];
                }
            }
        }
        return torch.tensor(inv, ScalarType.Float64, device);
    }

    /// <summary>Every weight tensor once, with its checkpoint name (a tied lm_head appears only as the embedding).
    /// For full-parameter training (<see cref="BaseModelTrainer"/>) and for <see cref="Save"/>.</summary>
    internal IReadOnlyList<(string Name, Tensor Weight)> NamedWeights()
    {
        var list = new List<(string, Tensor)> { ("model.embed_tokens.weight", _embed) };
        for (int i = 0; i < _layers.Length; i++)
        {
            var l = _layers[i];
            list.Add(($"model.layers.{i}.input_layernorm.weight", l.InputNorm));
            foreach (var t in LoraTargets.All)
            {
                list.Add((LoraTargets.ModulePath(i, t) + ".weight", l.Weights[(int)t]));
                if (l.Biases[(int)t] is Tensor b)
                    list.Add((LoraTargets.ModulePath(i, t) + ".bias", b));
            }
            list.Add(($"model.layers.{i}.post_attention_layernorm.weight", l.PostNorm));
        }
        list.Add(("model.norm.weight", _finalNorm));
        if (!TiedEmbeddings)
            list.Add(("lm_head.weight", _lmHead));
        return list;
    }

    /// <summary>Writes config.json and model.safetensors (F32) of the current weights into an empty or new folder.</summary>
    public void Save(string directory)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, LlamaConfig.FileName), Config.ToJson());
        var tensors = NamedWeights().Select(w =>
        {
            using var cpu = w.Weight.detach().to_type(ScalarType.Float32).cpu().contiguous();
            var bytes = new byte[cpu.NumberOfElements * sizeof(float)];
            cpu.data<float>().CopyTo(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.AsSpan()));
            return (w.Name, Core.Formats.Safetensors.DTypeConversion.F32, (IReadOnlyList<long>)w.Weight.shape, (ReadOnlyMemory<byte>)bytes);
        }).ToList();
        string path = Path.Combine(directory, ModelCheckpoint.SingleFileName);
        File.Delete(path);
        Core.Formats.Safetensors.SafetensorsWriter.WriteFile(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        var all = new HashSet<Tensor>(ReferenceEqualityComparer.Instance) { _embed, _lmHead, _finalNorm, _invFreq };
        foreach (var l in _layers)
        {
            all.Add(l.InputNorm);
            all.Add(l.PostNorm);
            foreach (var w in l.Weights)
                all.Add(w);
            foreach (var b in l.Biases.OfType<Tensor>())
                all.Add(b);
        }
        foreach (var t in all)
            t.Dispose();
    }
}
