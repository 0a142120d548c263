using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using EraserWorker.Core.Formats.GradientCaches;

namespace EraserWorker.Models;

/// <summary>The linear layers of a LLaMA decoder layer that LoRA can adapt.</summary>
public enum LoraTarget
{
    QProj, KProj, VProj, OProj, GateProj, UpProj, DownProj,
}

public static class LoraTargets
{
    /// <summary>The canonical order of the targets inside a layer (θ's order: layer, then this order, A before B).</summary>
    public static readonly LoraTarget[] All = Enum.GetValues<LoraTarget>();

    /// <summary>The module's attribute name (q_proj, ...).</summary>
    public static string Name(LoraTarget t) => t switch
    {
        LoraTarget.QProj => "q_proj",
        LoraTarget.KProj => "k_proj",
        LoraTarget.VProj => "v_proj",
        LoraTarget.OProj => "o_proj",
        LoraTarget.GateProj => "gate_proj",
        LoraTarget.UpProj => "up_proj",
        _ => "down_proj",
    };

    /// <summary>The module's path inside the causal LM: <c>model.layers.N.self_attn.q_proj</c>.</summary>
    public static string ModulePath(int layer, LoraTarget t) =>
        $"model.layers.{layer}.{(t <= LoraTarget.OProj ? "self_attn" : "mlp")}.{Name(t)}";

    public static bool TryParse(string name, out LoraTarget target)
    {
        foreach (var t in All)
            if (Name(t) == name)
            {
                target = t;
                return true;
            }
        target = default;
        return false;
    }

    /// <summary>(in_features, out_features) of the module's base linear layer.</summary>
    public static (int In, int Out) Dimensions(LlamaConfig c, LoraTarget t) => t switch
    {
        LoraTarget.QProj => (c.HiddenSize, c.NumAttentionHeads * c.HeadDim),
        LoraTarget.KProj or LoraTarget.VProj => (c.HiddenSize, c.NumKeyValueHeads * c.HeadDim),
        LoraTarget.OProj => (c.NumAttentionHeads * c.HeadDim, c.HiddenSize),
        LoraTarget.GateProj or LoraTarget.UpProj => (c.HiddenSize, c.IntermediateSize),
        _ => (c.IntermediateSize, c.HiddenSize),
    };
}

/// <summary>
/// The fields of a PEFT <c>adapter_config.json</c> (peft_type LORA) that define the adapter's function:
/// r, lora_alpha, target_modules (list of names or a regular expression), use_rslora, layers_to_transform,
/// rank_pattern and alpha_pattern. Dropout is ignored (it is off whenever gradients are taken here).
/// DoRA, LoRA on biases, modules_to_save and fan_in_fan_out are rejected.
/// </summary>
public sealed record LoraConfig
{
    public const string FileName = EraserWorker.Contracts.StoredFileNames.AdapterConfig;

    public int R { get; init; } = 8;
    public double LoraAlpha { get; init; } = 8;
    public bool UseRsLora { get; init; }
    /// <summary>Module names (matched against the end of the module path) — or null when <see cref="TargetRegex"/> is set.</summary>
    public IReadOnlyList<string>? TargetModules { get; init; } = ["q_proj", "v_proj"];
    /// <summary>A regular expression that must match the full module path (PEFT's string form of target_modules).</summary>
    public string? TargetRegex { get; init; }
    public IReadOnlyList<int>? LayersToTransform { get; init; }
    public IReadOnlyDictionary<string, int> RankPattern { get; init; } = new Dictionary<string, int>();
    public IReadOnlyDictionary<string, double> AlphaPattern { get; init; } = new Dictionary<string, double>();
    public double LoraDropout { get; init; }
    public string? BaseModelNameOrPath { get; init; }

    public static LoraConfig Parse(string json, string source = FileName)
    {
        JsonObject o;
        try
        {
            o = JsonNode.Parse(json) as JsonObject ?? throw new InvalidDataException($"{source}: not a JSON object.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON ({e.Message}).", e);
        }
        string peftType = o["peft_type"]?.GetValue<string>() ?? "LORA";
        if (peftType != "LORA")
            throw new InvalidDataException($"{source}: peft_type '{peftType}' is not supported (LORA only).");
        if (o["use_dora"] is JsonValue dora && dora.GetValue<bool>())
            throw new InvalidDataException($"{source}: DoRA adapters (use_dora) are not supported.");
        if (o["bias"] is JsonValue bias && bias.GetValue<string>() != "none")
            throw new InvalidDataException($"{source}: bias '{bias}' is not supported (bias \"none\" only).");
        if (o["modules_to_save"] is JsonArray saved && saved.Count > 0)
            throw new InvalidDataException($"{source}: modules_to_save ({saved.ToJsonString()}) is not supported by the model runtime.");
        if (o["fan_in_fan_out"] is JsonValue fifo && fifo.GetValue<bool>())
            throw new InvalidDataException($"{source}: fan_in_fan_out is not supported (LLaMA's linear layers are not Conv1D).");

        IReadOnlyList<string>? modules = null;
        string? regex = null;
        switch (o["target_modules"])
        {
            case JsonArray a:
                modules = a.Select(n => n?.GetValue<string>() ?? throw new InvalidDataException($"{source}: target_modules holds a null.")).ToArray();
                break;
            case JsonValue v when v.TryGetValue(out string? s):
                if (s == "all-linear")
                    modules = LoraTargets.All.Select(LoraTargets.Name).ToArray();
                else
                    regex = s;
                break;
            default:
                throw new InvalidDataException($"{source}: target_modules is missing.");
        }
        IReadOnlyList<int>? layers = o["layers_to_transform"] switch
        {
            null => null,
            JsonArray a => a.Select(n => n!.GetValue<int>()).ToArray(),
            JsonValue v => [v.GetValue<int>()],
            _ => throw new InvalidDataException($"{source}: layers_to_transform must be an integer or a list."),
        };
        var config = new LoraConfig
        {
            R = o["r"]?.GetValue<int>() ?? 8,
            LoraAlpha = o["lora_alpha"]?.GetValue<double>() ?? 8,
            UseRsLora = o["use_rslora"]?.GetValue<bool>() ?? false,
            TargetModules = modules,
            TargetRegex = regex,
            LayersToTransform = layers,
            RankPattern = (o["rank_pattern"] as JsonObject)?.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>()) ?? new Dictionary<string, int>(),
            AlphaPattern = (o["alpha_pattern"] as JsonObject)?.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<double>()) ?? new Dictionary<string, double>(),
            LoraDropout = o["lora_dropout"]?.GetValue<double>() ?? 0,
            BaseModelNameOrPath = o["base_model_name_or_path"]?.GetValue<string>(),
        };
        if (config.R < 1)
            throw new InvalidDataException($"{source}: r must be ≥ 1.");
        return config;
    }

    public static LoraConfig Load(string adapterDirectory)
    {
        string path = Path.Combine(adapterDirectory, FileName);
        if (!File.Exists(path))
            throw new FileNotFoundException($"'{adapterDirectory}' is not a PEFT adapter folder: {FileName} is missing.", path);
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>The adapter_config.json a PEFT LoRA adapter of this configuration carries.</summary>
    public string ToJson()
    {
        var o = new JsonObject
        {
            ["peft_type"] = "LORA",
            ["task_type"] = "CAUSAL_LM",
            ["base_model_name_or_path"] = BaseModelNameOrPath,
            ["r"] = R,
            ["lora_alpha"] = LoraAlpha,
            ["lora_dropout"] = LoraDropout,
            ["use_rslora"] = UseRsLora,
            ["target_modules"] = TargetRegex is not null ? JsonValue.Create(TargetRegex) : new JsonArray(TargetModules!.Select(m => (JsonNode)JsonValue.Create(m)!).ToArray()),
            ["layers_to_transform"] = LayersToTransform is null ? null : new JsonArray(LayersToTransform.Select(l => (JsonNode)JsonValue.Create(l)).ToArray()),
            ["rank_pattern"] = new JsonObject(RankPattern.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value)))),
            ["alpha_pattern"] = new JsonObject(AlphaPattern.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value)))),
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["inference_mode"] = true,
            ["init_lora_weights"] = true,
            ["modules_to_save"] = null,
            ["use_dora"] = false,
        };
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Whether the module at <paramref name="modulePath"/> (e.g. model.layers.3.mlp.up_proj) is adapted.</summary>
    public bool Targets(string modulePath, int layer)
    {
        if (LayersToTransform is not null && !LayersToTransform.Contains(layer))
            return false;
        if (TargetRegex is not null)
            return Regex.IsMatch(modulePath, "^(?:" + TargetRegex + ")$");
        return TargetModules!.Any(t => modulePath == t || modulePath.EndsWith("." + t, StringComparison.Ordinal));
    }

    /// <summary>(rank, scaling) of a module: rank_pattern / alpha_pattern override r / lora_alpha for keys matching
    /// the module path (PEFT: <c>re.match(rf"(.*\.)?{key}$", path)</c>); scaling is alpha / r, or alpha / √r with rsLoRA.</summary>
    public (int Rank, double Scaling) RankAndScaling(string modulePath)
    {
        int r = R;
        double alpha = LoraAlpha;
        foreach (var (key, value) in RankPattern)
            if (Regex.IsMatch(modulePath, $"^(.*\\.)?{key}$"))
            {
                r = value;
                break;
            }
        foreach (var (key, value) in AlphaPattern)
            if (Regex.IsMatch(modulePath, $"^(.*\\.)?{key}$"))
            {
                alpha = value;
                break;
            }
        return (r, UseRsLora ? alpha / Math.Sqrt(r) : alpha / r);
    }
}

/// <summary>One adapted linear layer and where its A [r, in] and B [out, r] sit in θ.</summary>
public sealed record LoraModule(int Layer, LoraTarget Target, int In, int Out, int Rank, double Scaling, long OffsetA, long OffsetB)
{
    public string ModulePath => LoraTargets.ModulePath(Layer, Target);

    /// <summary>PEFT key of A: <c>base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight</c>.</summary>
    public string KeyA => $"base_model.model.{ModulePath}.lora_A.weight";

    public string KeyB => $"base_model.model.{ModulePath}.lora_B.weight";

    public long CountA => (long)Rank * In;

    public long CountB => (long)Out * Rank;
}

/// <summary>
/// θ's layout for a model and a LoRA configuration: the adapted modules in (layer, q, k, v, o, gate, up, down) order,
/// A before B — the order of the gradient cache's <c>parameters</c>.
/// </summary>
public sealed class LoraLayout
{
    public LoraLayout(LlamaConfig model, LoraConfig lora)
    {
        Model = model;
        Lora = lora;
        var modules = new List<LoraModule>();
        var byKey = new Dictionary<(int, LoraTarget), LoraModule>();
        long offset = 0;
        for (int layer = 0; layer < model.NumHiddenLayers; layer++)
            foreach (var t in LoraTargets.All)
            {
                string path = LoraTargets.ModulePath(layer, t);
                if (!lora.Targets(path, layer))
                    continue;
                var (input, output) = LoraTargets.Dimensions(model, t);
                var (rank, scaling) = lora.RankAndScaling(path);
                var m = new LoraModule(layer, t, input, output, rank, scaling, offset, offset + (long)rank * input);
                offset += m.CountA + m.CountB;
                modules.Add(m);
                byKey[(layer, t)] = m;
            }
        if (modules.Count == 0)
            throw new InvalidDataException("The LoRA configuration targets no module of this model (target_modules / layers_to_transform).");
        Modules = modules;
        _byKey = byKey;
        ParameterCount = offset;
    }

    private readonly Dictionary<(int, LoraTarget), LoraModule> _byKey;

    public LlamaConfig Model { get; }

    public LoraConfig Lora { get; }

    public IReadOnlyList<LoraModule> Modules { get; }

    /// <summary>P.</summary>
    public long ParameterCount { get; }

    public LoraModule? Find(int layer, LoraTarget target) => _byKey.GetValueOrDefault((layer, target));

    /// <summary>The gradient cache's <c>parameters</c>: PEFT keys and shapes in θ's order.</summary>
    public IReadOnlyList<ParameterSpec> Parameters =>
        Modules.SelectMany(m => new[]
        {
            new ParameterSpec(m.KeyA, [m.Rank, m.In]),
            new ParameterSpec(m.KeyB, [m.Out, m.Rank]),
        }).ToArray();
}
