using System.Text.Json;
using System.Text.Json.Nodes;

namespace EraserWorker.Models;

/// <summary>
/// The architecture fields of a Hugging Face <c>config.json</c> for a LLaMA-family causal LM (model_type
/// <c>llama</c>, <c>mistral</c>, <c>qwen2</c>): RMSNorm, rotary position embeddings, grouped-query attention,
/// SwiGLU MLP, tied or untied embeddings. Field names and defaults follow <c>transformers.LlamaConfig</c>.
/// </summary>
public sealed record LlamaConfig
{
    public const string FileName = "config.json";

    public string ModelType { get; init; } = "llama";
    public int VocabSize { get; init; } = 32000;
    public int HiddenSize { get; init; } = 4096;
    public int IntermediateSize { get; init; } = 11008;
    public int NumHiddenLayers { get; init; } = 32;
    public int NumAttentionHeads { get; init; } = 32;
    /// <summary>Key/value heads (grouped-query attention); defaults to <see cref="NumAttentionHeads"/>.</summary>
    public int NumKeyValueHeads { get; init; } = 32;
    /// <summary><c>head_dim</c>, defaulting to hidden_size / num_attention_heads.</summary>
    public int HeadDim { get; init; } = 128;
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    /// <summary><c>rope_scaling</c>: null, or <see cref="RopeScaling"/> of type linear or llama3.</summary>
    public RopeScaling? RopeScaling { get; init; }
    public bool TieWordEmbeddings { get; init; }
    /// <summary>Biases on q/k/v/o (<c>attention_bias</c>; qwen2 has q/k/v biases always).</summary>
    public bool AttentionBias { get; init; }
    /// <summary>Qwen2: biases on q, k and v but not o.</summary>
    public bool QkvBiasOnly { get; init; }
    public bool MlpBias { get; init; }
    public int? BosTokenId { get; init; }
    public int? EosTokenId { get; init; }
    public int? PadTokenId { get; init; }
    public int MaxPositionEmbeddings { get; init; } = 2048;
    /// <summary>Mistral's sliding attention window (a query attends to the last <c>SlidingWindow</c> positions); null: full causal attention.</summary>
    public int? SlidingWindow { get; init; }

    /// <summary>Parses and validates <c>config.json</c> text.</summary>
    /// <exception cref="InvalidDataException">Not a supported LLaMA-family configuration.</exception>
    public static LlamaConfig Parse(string json, string source = FileName)
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(json) as JsonObject ?? throw new InvalidDataException($"{source}: not a JSON object.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON ({e.Message}).", e);
        }
        string modelType = Str(root, "model_type") ?? "llama";
        if (modelType is not ("llama" or "mistral" or "qwen2"))
            throw new InvalidDataException($"{source}: model_type '{modelType}' is not a supported LLaMA-family model (llama, mistral, qwen2).");
        string act = Str(root, "hidden_act") ?? "silu";
        if (act is not ("silu" or "swish"))
            throw new InvalidDataException($"{source}: hidden_act '{act}' is not supported (SwiGLU with silu only).");
        if (root["pretraining_tp"] is JsonValue tp && tp.GetValue<int>() > 1)
            throw new InvalidDataException($"{source}: pretraining_tp > 1 is not supported.");

        int hidden = Int(root, "hidden_size", source) ?? 4096;
        int heads = Int(root, "num_attention_heads", source) ?? 32;
        int kvHeads = Int(root, "num_key_value_heads", source) ?? heads;
        int headDim = Int(root, "head_dim", source) ?? (heads > 0 ? hidden / heads : 0);
        var config = new LlamaConfig
        {
            ModelType = modelType,
            VocabSize = Int(root, "vocab_size", source) ?? 32000,
            HiddenSize = hidden,
            IntermediateSize = Int(root, "intermediate_size", source) ?? 11008,
            NumHiddenLayers = Int(root, "num_hidden_layers", source) ?? 32,
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = headDim,
            RmsNormEps = Dbl(root, "rms_norm_eps", source) ?? 1e-6,
            RopeTheta = Dbl(root, "rope_theta", source) ?? 10000.0,
            RopeScaling = RopeScaling.Parse(root["rope_scaling"], source),
            TieWordEmbeddings = Bool(root, "tie_word_embeddings") ?? false,
            SlidingWindow = modelType == "mistral" || Bool(root, "use_sliding_window") == true ? Int(root, "sliding_window", source) : null,
            AttentionBias = Bool(root, "attention_bias") ?? false,
            QkvBiasOnly = modelType == "qwen2",
            MlpBias = Bool(root, "mlp_bias") ?? false,
            BosTokenId = FirstInt(root["bos_token_id"]),
            EosTokenId = FirstInt(root["eos_token_id"]),
            PadTokenId = FirstInt(root["pad_token_id"]),
            MaxPositionEmbeddings = Int(root, "max_position_embeddings", source) ?? 2048,
        };
        config.Validate(source);
        return config;
    }

    /// <summary>Reads <c>config.json</c> from a model folder.</summary>
    public static LlamaConfig Load(string modelDirectory)
    {
        string path = Path.Combine(modelDirectory, FileName);
        if (!File.Exists(path))
            throw new FileNotFoundException($"'{modelDirectory}' is not a Hugging Face model folder: {FileName} is missing.", path);
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>The config.json text of this configuration (the fields this runtime reads).</summary>
    public string ToJson()
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(ModelType switch { "mistral" => "MistralForCausalLM", "qwen2" => "Qwen2ForCausalLM", _ => "LlamaForCausalLM" }),
            ["model_type"] = ModelType,
            ["vocab_size"] = VocabSize,
            ["hidden_size"] = HiddenSize,
            ["intermediate_size"] = IntermediateSize,
            ["num_hidden_layers"] = NumHiddenLayers,
            ["num_attention_heads"] = NumAttentionHeads,
            ["num_key_value_heads"] = NumKeyValueHeads,
            ["head_dim"] = HeadDim,
            ["hidden_act"] = "silu",
            ["rms_norm_eps"] = RmsNormEps,
            ["rope_theta"] = RopeTheta,
            ["rope_scaling"] = RopeScaling?.ToJson(),
            ["tie_word_embeddings"] = TieWordEmbeddings,
            ["attention_bias"] = AttentionBias,
            ["mlp_bias"] = MlpBias,
            ["max_position_embeddings"] = MaxPositionEmbeddings,
            ["sliding_window"] = SlidingWindow,
            ["bos_token_id"] = BosTokenId,
            ["eos_token_id"] = EosTokenId,
            ["torch_dtype"] = "float32",
        };
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    internal void Validate(string source)
    {
        void Check(bool ok, string what)
        {
            if (!ok)
                throw new InvalidDataException($"{source}: {what}.");
        }
        Check(VocabSize > 0, "vocab_size must be ≥ 1");
        Check(HiddenSize > 0 && IntermediateSize > 0 && NumHiddenLayers > 0, "hidden_size, intermediate_size and num_hidden_layers must be ≥ 1");
        Check(NumAttentionHeads > 0 && NumKeyValueHeads > 0, "the head counts must be ≥ 1");
        Check(NumAttentionHeads % NumKeyValueHeads == 0, $"num_attention_heads ({NumAttentionHeads}) must be a multiple of num_key_value_heads ({NumKeyValueHeads})");
        Check(HeadDim > 0 && HeadDim % 2 == 0, $"head_dim ({HeadDim}) must be even and ≥ 2");
        Check(RmsNormEps > 0 && double.IsFinite(RmsNormEps), "rms_norm_eps must be > 0");
        Check(RopeTheta > 0 && double.IsFinite(RopeTheta), "rope_theta must be > 0");
    }

    private static string? Str(JsonObject o, string key) =>
        o[key] is JsonValue v && v.TryGetValue(out string? s) ? s : null;

    private static bool? Bool(JsonObject o, string key) =>
        o[key] is JsonValue v && v.TryGetValue(out bool b) ? b : null;

    private static int? Int(JsonObject o, string key, string source)
    {
        var node = o[key];
        if (node is null)
            return null;
        if (node is JsonValue v && v.TryGetValue(out int i))
            return i;
        if (node is JsonValue d && d.TryGetValue(out double x) && x == Math.Floor(x) && Math.Abs(x) < int.MaxValue)
            return (int)x;
        throw new InvalidDataException($"{source}: '{key}' must be an integer (got {node.ToJsonString()}).");
    }

    private static double? Dbl(JsonObject o, string key, string source)
    {
        var node = o[key];
        if (node is null)
            return null;
        if (node is JsonValue v && v.TryGetValue(out double d))
            return d;
        throw new InvalidDataException($"{source}: '{key}' must be a number (got {node.ToJsonString()}).");
    }

    private static int? FirstInt(JsonNode? node) => node switch
    {
        JsonValue v when v.TryGetValue(out int i) => i,
        JsonArray a when a.Count > 0 && a[0] is JsonValue f && f.TryGetValue(out int j) => j,
        _ => null,
    };
}

/// <summary><c>rope_scaling</c>: <c>linear</c> (positions divided by factor) or <c>llama3</c> (frequency-dependent
/// scaling of the inverse frequencies, as in Llama 3.1/3.2).</summary>
public sealed record RopeScaling(string Type, double Factor, double LowFreqFactor = 1, double HighFreqFactor = 4,
    int OriginalMaxPositionEmbeddings = 8192)
{
    internal static RopeScaling? Parse(JsonNode? node, string source)
    {
        if (node is null)
            return null;
        if (node is not JsonObject o)
            throw new InvalidDataException($"{source}: rope_scaling must be an object or null.");
        string type = (o["rope_type"] ?? o["type"])?.GetValue<string>() ?? "default";
        double factor = o["factor"]?.GetValue<double>() ?? 1.0;
        switch (type)
        {
            case "default":
                return null;
            case "linear":
                return new RopeScaling(type, factor);
            case "llama3":
                return new RopeScaling(type, factor,
                    o["low_freq_factor"]?.GetValue<double>() ?? 1.0,
                    o["high_freq_factor"]?.GetValue<double>() ?? 4.0,
                    o["original_max_position_embeddings"]?.GetValue<int>() ?? 8192);
            default:
                throw new InvalidDataException($"{source}: rope_scaling type '{type}' is not supported (default, linear, llama3).");
        }
    }

    internal JsonObject ToJson() => Type == "llama3"
        ? new JsonObject
        {
            ["rope_type"] = Type, ["factor"] = Factor, ["low_freq_factor"] = LowFreqFactor,
            ["high_freq_factor"] = HighFreqFactor, ["original_max_position_embeddings"] = OriginalMaxPositionEmbeddings,
        }
        : new JsonObject { ["rope_type"] = Type, ["factor"] = Factor };
}
