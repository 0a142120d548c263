using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Core.Formats.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Models;

/// <summary>
/// The weights of a Hugging Face model folder: <c>model.safetensors</c>, or shards listed by
/// <c>model.safetensors.index.json</c> (<c>weight_map</c>: tensor name → shard file). F32, F16, BF16 and F64 tensors
/// are decoded exactly and converted once to the compute dtype.
/// </summary>
public sealed class ModelCheckpoint
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly Dictionary<string, (string Path, SafetensorsHeader Header, SafetensorsEntry Entry)> _tensors;

    private ModelCheckpoint(string directory, Dictionary<string, (string, SafetensorsHeader, SafetensorsEntry)> tensors)
    {
        Directory = directory;
        _tensors = tensors;
    }

    public string Directory { get; }

    public IEnumerable<string> Names => _tensors.Keys;

    public bool Contains(string name) => _tensors.ContainsKey(name);

    /// <summary>The stored dtype of a tensor (F32, F16, BF16, F64).</summary>
    public string DTypeOf(string name) => Get(name).Entry.DType;

    public IReadOnlyList<long> ShapeOf(string name) => Get(name).Entry.Shape;

    /// <summary>Opens a model folder's weights (the headers only).</summary>
    public static ModelCheckpoint Open(string directory)
    {
        string full = Path.GetFullPath(directory);
        var tensors = new Dictionary<string, (string, SafetensorsHeader, SafetensorsEntry)>(StringComparer.Ordinal);
        string single = Path.Combine(full, SingleFileName);
        string index = Path.Combine(full, IndexFileName);
        IEnumerable<string> files;
        if (File.Exists(index))
        {
            JsonObject root;
            try
            {
                root = JsonNode.Parse(File.ReadAllText(index)) as JsonObject ?? throw new InvalidDataException($"{IndexFileName}: not a JSON object.");
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{IndexFileName}: not valid JSON ({e.Message}).", e);
            }
            if (root["weight_map"] is not JsonObject map)
                throw new InvalidDataException($"{IndexFileName}: missing 'weight_map'.");
            var byFile = new Dictionary<string, List<string>>(StringComparer.Ordinal);
            foreach (var (name, value) in map)
            {
                string file = value?.GetValue<string>() ?? throw new InvalidDataException($"{IndexFileName}: tensor '{name}' has no file.");
                if (file.Contains('/') || file.Contains('\\') || file is "." or "..")
                    throw new InvalidDataException($"{IndexFileName}: shard file '{file}' must be a plain file name.");
                if (!byFile.TryGetValue(file, out var list))
                    byFile[file] = list = [];
                list.Add(name);
            }
            foreach (var (file, names) in byFile)
            {
                string path = Path.Combine(full, file);
                if (!File.Exists(path))
                    throw new FileNotFoundException($"{IndexFileName} names shard '{file}', which is missing from '{directory}'.", path);
                var header = SafetensorsHeader.ReadFile(path);
                foreach (var name in names)
                {
                    if (!header.TryGet(name, out var entry))
                        throw new InvalidDataException($"{IndexFileName} maps '{name}' to '{file}', which has no such tensor.");
                    tensors[name] = (path, header, entry);
                }
            }
            files = [];
        }
        else if (File.Exists(single))
            files = [single];
        else
        {
            string hint = File.Exists(Path.Combine(full, "pytorch_model.bin")) ? " (pytorch_model.bin pickles are not supported; save with safe_serialization=True)" : "";
            throw new FileNotFoundException($"'{directory}' has neither {SingleFileName} nor {IndexFileName}{hint}.", single);
        }
        foreach (var path in files)
        {
            var header = SafetensorsHeader.ReadFile(path);
            foreach (var entry in header.Entries)
                tensors[entry.Name] = (path, header, entry);
        }
        return new ModelCheckpoint(full, tensors);
    }

    /// <summary>Reads a tensor and converts it to <paramref name="dtype"/> (Float32 or Float64) on <paramref name="device"/>.
    /// The result is detached from any dispose scope: the caller owns it.</summary>
    public Tensor Load(string name, ScalarType dtype, Device device)
    {
        var (path, header, entry) = Get(name);
        if (!DTypeConversion.IsFloating(entry.DType))
            throw new InvalidDataException($"{Path.GetFileName(path)}: tensor '{name}' is {entry.DType}, not a floating-point tensor.");
        long count = entry.ElementCount;
        if (count > Array.MaxLength)
            throw new NotSupportedException($"Tensor '{name}' has {count} elements, more than one array holds.");
        var raw = new byte[entry.ByteLength];
        using (var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            long offset = header.FileOffsetOf(entry);
            int done = 0;
            while (done < raw.Length)
            {
                int n = RandomAccess.Read(handle, raw.AsSpan(done), offset + done);
                if (n == 0)
                    throw new InvalidDataException($"{Path.GetFileName(path)}: truncated while reading '{name}'.");
                done += n;
            }
        }
        long[] shape = entry.Shape.ToArray();
        Tensor result;
        if (dtype == ScalarType.Float64)
        {
            var values = new double[count];
            DTypeConversion.ToDouble(entry.DType, raw, values);
            result = torch.tensor(values, shape, ScalarType.Float64);
        }
        else
        {
            var values = new float[count];
            DTypeConversion.ToSingle(entry.DType, raw, values);
            result = torch.tensor(values, shape, ScalarType.Float32);
            if (dtype != ScalarType.Float32)
                result = result.to_type(dtype, disposeAfter: true);
        }
        if (device.type != DeviceType.CPU)
            result = result.to(device, disposeAfter: true);
        return result.DetachFromDisposeScope();
    }

    private (string Path, SafetensorsHeader Header, SafetensorsEntry Entry) Get(string name) =>
        _tensors.TryGetValue(name, out var t) ? t : throw new InvalidDataException($"Model '{Directory}': the weights have no tensor '{name}'.");
}
