using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace EraserWorker.Core.Formats.GradientCaches;

/// <summary>One shard of a gradient cache: its safetensors file and its ids file (plain file names inside the
/// cache folder).</summary>
public sealed record ShardRef(string File, string Ids);

/// <summary>
/// <c>cache.json</c> of an <c>eraser.gradcache/v1</c> gradient cache (SPEC §2), camelCase:
/// <code>
/// { "format": "eraser.gradcache/v1",
///   "parameters": [ {"name": "...lora_A.weight", "shape": [8, 768]}, ... ],
///   "l2": 0.0,
///   "shards": [ {"file": "shard-00000.safetensors", "ids": "shard-00000.ids"}, ... ],
///   ...any other fields (kept in <see cref="Extra"/> and written back) }
/// </code>
/// A replacement set uses the same format.
/// </summary>
public sealed class GradientCacheManifest
{
    public const string FormatV1 = "eraser.gradcache/v1";
    public const string FileName = EraserWorker.Contracts.StoredFileNames.CacheIndex;

    private static readonly HashSet<string> Reserved = new(StringComparer.Ordinal) { "format", "parameters", "l2", "shards" };
    private readonly JsonObject _extra;

    /// <param name="parameters">θ's tensors in θ's order: non-empty, unique names.</param>
    /// <param name="l2">The objective's L2 weight: finite and ≥ 0.</param>
    /// <param name="shards">Shard files: plain, unique file names.</param>
    /// <param name="extra">Additional top-level fields (deep-copied); may not use the four reserved names.</param>
    public GradientCacheManifest(IReadOnlyList<ParameterSpec> parameters, double l2, IReadOnlyList<ShardRef> shards, JsonObject? extra = null)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(shards);
        string? problem = CheckParameters(parameters) ?? CheckL2(l2) ?? CheckShards(shards) ?? CheckExtra(extra);
        if (problem is not null)
            throw new ArgumentException(problem);
        Parameters = parameters.ToArray();
        L2 = l2;
        Shards = shards.ToArray();
        _extra = extra is null ? new JsonObject() : (JsonObject)extra.DeepClone();
    }

    public string Format => FormatV1;

    public IReadOnlyList<ParameterSpec> Parameters { get; }

    public double L2 { get; }

    public IReadOnlyList<ShardRef> Shards { get; }

    /// <summary>The fields other than format, parameters, l2 and shards (a copy; changing it does not change the
    /// manifest).</summary>
    public JsonObject Extra => (JsonObject)_extra.DeepClone();

    /// <summary>P = Σ parameter sizes.</summary>
    public long ParameterCount => ParameterSpec.TotalCount(Parameters);

    /// <summary>Reads <c>cache.json</c>.</summary>
    /// <exception cref="GradientCacheException">Missing, unreadable or invalid.</exception>
    public static GradientCacheManifest Load(string path)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new GradientCacheException($"{Path.GetFileName(path)}: not found ({path}) — not a gradient cache folder?", e);
        }
        return Parse(bytes, Path.GetFileName(path));
    }

    /// <summary>Parses and validates a manifest.</summary>
    /// <exception cref="GradientCacheException">Invalid; the message starts with <paramref name="fileName"/>.</exception>
    public static GradientCacheManifest Parse(ReadOnlySpan<byte> utf8Json, string fileName = FileName)
    {
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(utf8Json, documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false, MaxDepth = 64 });
        }
        catch (JsonException e)
        {
            throw Invalid(fileName, $"not valid JSON ({e.Message})");
        }
        if (root is not JsonObject obj)
            throw Invalid(fileName, "not a JSON object");

        // Format first: a file of another format gets that message, not a list of its differences.
        if (!obj.TryGetPropertyValue("format", out var formatNode) || formatNode is null)
            throw Invalid(fileName, $"missing 'format' (expected \"{FormatV1}\")");
        if (formatNode.GetValueKind() != JsonValueKind.String || formatNode.GetValue<string>() != FormatV1)
            throw Invalid(fileName, $"unsupported format {formatNode.ToJsonString()} (expected \"{FormatV1}\")");

        var parameters = ParseParameters(obj, fileName);
        double l2 = ParseL2(obj, fileName);
        var shards = ParseShards(obj, fileName);
        var extra = new JsonObject();
        foreach (var (key, value) in obj)
            if (!Reserved.Contains(key))
                extra[key] = value?.DeepClone();
        string? problem = CheckParameters(parameters) ?? CheckShards(shards);
        if (problem is not null)
            throw Invalid(fileName, problem);
        return new GradientCacheManifest(parameters, l2, shards, extra);
    }

    /// <summary>The manifest as indented UTF-8 JSON: the four fields first, then <see cref="Extra"/>.</summary>
    public byte[] ToUtf8Json()
    {
        var obj = new JsonObject
        {
            ["format"] = FormatV1,
            ["parameters"] = new JsonArray(Parameters.Select(p => (JsonNode)new JsonObject
            {
                ["name"] = p.Name,
                ["shape"] = new JsonArray(p.Shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
            }).ToArray()),
            ["l2"] = L2,
            ["shards"] = new JsonArray(Shards.Select(s => (JsonNode)new JsonObject { ["file"] = s.File, ["ids"] = s.Ids }).ToArray()),
        };
        foreach (var (key, value) in _extra)
            obj[key] = value?.DeepClone();
        var options = new JsonSerializerOptions { WriteIndented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        return JsonSerializer.SerializeToUtf8Bytes(obj, options);
    }

    /// <summary>Writes <see cref="ToUtf8Json"/> to <paramref name="path"/> (created or overwritten) and flushes it to disk.</summary>
    public void Save(string path)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None);
        stream.Write(ToUtf8Json());
        stream.Flush(flushToDisk: true);
    }

    // ------------------------------------------------------------------ parsing

    private static List<ParameterSpec> ParseParameters(JsonObject obj, string fileName)
    {
        if (!obj.TryGetPropertyValue("parameters", out var node) || node is not JsonArray array)
            throw Invalid(fileName, "missing 'parameters' array");
        if (array.Count == 0)
            throw Invalid(fileName, "'parameters' is empty (θ needs at least one tensor)");
        var result = new List<ParameterSpec>(array.Count);
        for (int i = 0; i < array.Count; i++)
        {
            if (array[i] is not JsonObject p)
                throw Invalid(fileName, $"parameters[{i}] is not an object with name and shape");
            if (!p.TryGetPropertyValue("name", out var nameNode) || nameNode is null ||
                nameNode.GetValueKind() != JsonValueKind.String || string.IsNullOrEmpty(nameNode.GetValue<string>()))
                throw Invalid(fileName, $"parameters[{i}] has no (non-empty) 'name'");
            string name = nameNode.GetValue<string>();
            if (!p.TryGetPropertyValue("shape", out var shapeNode) || shapeNode is not JsonArray shapeArray)
                throw Invalid(fileName, $"parameter '{name}' has no 'shape' array");
            var shape = new long[shapeArray.Count];
            for (int k = 0; k < shape.Length; k++)
            {
                var d = shapeArray[k];
                if (d is null || d.GetValueKind() != JsonValueKind.Number || !TryGetInt64(d, out shape[k]) || shape[k] < 1)
                    throw Invalid(fileName, $"parameter '{name}' has a bad shape {shapeArray.ToJsonString()} (dimensions must be integers ≥ 1)");
            }
            try
            {
                result.Add(new ParameterSpec(name, shape));
            }
            catch (ArgumentException e)
            {
                throw Invalid(fileName, $"parameter '{name}': {e.Message}");
            }
        }
        try
        {
            ParameterSpec.TotalCount(result);
        }
        catch (OverflowException)
        {
            throw Invalid(fileName, "the parameters are too large in total");
        }
        return result;
    }

    private static bool TryGetInt64(JsonNode node, out long value)
    {
        value = 0;
        return node is JsonValue v && v.TryGetValue(out value);
    }

    private static double ParseL2(JsonObject obj, string fileName)
    {
        if (!obj.TryGetPropertyValue("l2", out var node) || node is null)
            throw Invalid(fileName, "missing 'l2' (the objective's L2 weight; 0 if none)");
        if (node.GetValueKind() != JsonValueKind.Number)
            throw Invalid(fileName, $"'l2' is {node.ToJsonString()}, not a number");
        if (node is not JsonValue v || !v.TryGetValue(out double l2))
            throw Invalid(fileName, $"'l2' is {node.ToJsonString()}, not a representable number");
        string? problem = CheckL2(l2);
        return problem is null ? l2 : throw Invalid(fileName, problem);
    }

    private static List<ShardRef> ParseShards(JsonObject obj, string fileName)
    {
        if (!obj.TryGetPropertyValue("shards", out var node) || node is not JsonArray array)
            throw Invalid(fileName, "missing 'shards' array");
        if (array.Count == 0)
            throw Invalid(fileName, "'shards' is empty");
        var result = new List<ShardRef>(array.Count);
        for (int i = 0; i < array.Count; i++)
        {
            if (array[i] is not JsonObject s)
                throw Invalid(fileName, $"shards[{i}] is not an object with file and ids");
            result.Add(new ShardRef(GetString(s, "file", i), GetString(s, "ids", i)));
        }
        return result;

        string GetString(JsonObject s, string key, int i) =>
            s.TryGetPropertyValue(key, out var v) && v is not null && v.GetValueKind() == JsonValueKind.String
                ? v.GetValue<string>()
                : throw Invalid(fileName, $"shards[{i}] has no '{key}' file name");
    }

    // ------------------------------------------------------------------ validation shared with the constructor

    private static string? CheckParameters(IReadOnlyList<ParameterSpec> parameters)
    {
        if (parameters.Count == 0)
            return "'parameters' is empty (θ needs at least one tensor)";
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in parameters)
            if (!names.Add(p.Name))
                return $"parameter '{p.Name}' is listed twice";
        return null;
    }

    private static string? CheckL2(double l2) =>
        double.IsFinite(l2) && l2 >= 0 ? null : $"'l2' must be a finite number ≥ 0 (got {l2})";

    private static string? CheckShards(IReadOnlyList<ShardRef> shards)
    {
        if (shards.Count == 0)
            return "'shards' is empty";
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var s in shards)
        {
            foreach (string f in new[] { s.File, s.Ids })
            {
                if (!IsPlainFileName(f))
                    return $"shard file name '{f}' must be a plain file name inside the cache folder";
                if (!names.Add(f))
                    return $"shard file '{f}' is listed twice";
            }
            if (string.Equals(s.File, FileName, StringComparison.Ordinal) || string.Equals(s.Ids, FileName, StringComparison.Ordinal))
                return $"a shard cannot be named '{FileName}'";
        }
        return null;
    }

    private static string? CheckExtra(JsonObject? extra)
    {
        if (extra is null)
            return null;
        foreach (var (key, _) in extra)
            if (Reserved.Contains(key))
                return $"extra field '{key}' clashes with a field of the format";
        return null;
    }

    internal static bool IsPlainFileName(string? name) =>
        !string.IsNullOrWhiteSpace(name) && name is not "." and not ".." &&
        name.IndexOfAny(['/', '\\', ':', '\0']) < 0 && !Path.IsPathRooted(name);

    private static GradientCacheException Invalid(string fileName, string problem) => new($"{fileName}: {problem}.");
}
