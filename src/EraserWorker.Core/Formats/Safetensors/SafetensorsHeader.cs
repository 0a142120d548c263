using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;

namespace EraserWorker.Core.Formats.Safetensors;

/// <summary>
/// The parsed, validated header of a safetensors file: <c>u64 N</c> (little-endian), <c>N</c> bytes of UTF-8 JSON,
/// then the data section. Validation follows the reference implementation: the header fits in the file and is at
/// most 100 MB, is a JSON object, every tensor has a known dtype, a shape and <c>data_offsets</c> whose byte length is
/// shape × element size, and the tensors tile the data section exactly (no overlap, no gap, no trailing bytes).
/// Any violation throws <see cref="InvalidDataException"/> with a message starting with the file name when known.
/// </summary>
public sealed class SafetensorsHeader
{
    /// <summary>Largest header accepted (the reference implementation's limit).</summary>
    public const long MaxHeaderLength = 100_000_000;

    private const string MetadataKey = "__metadata__";

    private readonly Dictionary<string, SafetensorsEntry> _byName;

    private SafetensorsHeader(string? fileName, long fileLength, byte[] rawHeader, List<SafetensorsEntry> entries,
        Dictionary<string, string>? metadata)
    {
        FileName = fileName;
        FileLength = fileLength;
        RawHeaderBytes = rawHeader;
        Entries = entries;
        Metadata = metadata;
        _byName = entries.ToDictionary(e => e.Name, StringComparer.Ordinal);
    }

    /// <summary>The file name used in messages (null when read from an anonymous stream).</summary>
    public string? FileName { get; }

    /// <summary>Total length of the file: <see cref="DataStart"/> + <see cref="DataLength"/>.</summary>
    public long FileLength { get; }

    /// <summary>The exact header JSON bytes as stored (the <c>N</c> bytes after the 8-byte length prefix, including
    /// any padding), for a verbatim rewrite.</summary>
    public ReadOnlyMemory<byte> RawHeaderBytes { get; }

    /// <summary>Offset of the data section in the file: 8 + header length.</summary>
    public long DataStart => 8 + RawHeaderBytes.Length;

    /// <summary>Length of the data section (all tensors' bytes).</summary>
    public long DataLength => FileLength - DataStart;

    /// <summary>All tensors, in data-offset order.</summary>
    public IReadOnlyList<SafetensorsEntry> Entries { get; }

    /// <summary>The <c>__metadata__</c> block (string → string), or null when absent.</summary>
    public IReadOnlyDictionary<string, string>? Metadata { get; }

    /// <exception cref="KeyNotFoundException">No such tensor.</exception>
    public SafetensorsEntry this[string name] =>
        _byName.TryGetValue(name, out var entry)
            ? entry
            : throw new KeyNotFoundException($"{Prefix(FileName)}no tensor named '{name}'.");

    public bool TryGet(string name, [MaybeNullWhen(false)] out SafetensorsEntry entry) => _byName.TryGetValue(name, out entry);

    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>Absolute file offset of a tensor's first byte.</summary>
    public long FileOffsetOf(SafetensorsEntry entry) => DataStart + entry.Begin;

    /// <summary>Reads and validates the header of the safetensors file at <paramref name="path"/>.</summary>
    public static SafetensorsHeader ReadFile(string path)
    {
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        return Read(handle, Path.GetFileName(path));
    }

    /// <summary>Reads and validates a header from <paramref name="stream"/>, which must be positioned at the start of
    /// the file; <paramref name="fileLength"/> is the whole file's length. Leaves the stream after the header.</summary>
    public static SafetensorsHeader Read(Stream stream, long fileLength, string? fileName = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        byte[] prefix = new byte[8];
        long headerLength = CheckPrefix(fileLength, fileName, ReadFully(stream, prefix) ? prefix : null);
        byte[] raw = new byte[headerLength];
        if (!ReadFully(stream, raw))
            throw Invalid(fileName, $"the file is truncated: the header needs {8 + headerLength} bytes but the stream ends first");
        return Parse(raw, fileLength, fileName);
    }

    /// <summary>Reads and validates the header through a file handle with positioned reads (the handle's position is
    /// not used).</summary>
    public static SafetensorsHeader Read(SafeFileHandle handle, string? fileName = null)
    {
        long fileLength = RandomAccess.GetLength(handle);
        byte[] prefix = new byte[8];
        int got = FileRead.ReadAtMost(handle, prefix, 0);
        long headerLength = CheckPrefix(fileLength, fileName, got == 8 ? prefix : null);
        byte[] raw = new byte[headerLength];
        if (FileRead.ReadAtMost(handle, raw, 8) != raw.Length)
            throw Invalid(fileName, $"the file is truncated: the header needs {8 + headerLength} bytes but the file ends first");
        return Parse(raw, fileLength, fileName);
    }

    private static bool ReadFully(Stream stream, byte[] buffer)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = stream.Read(buffer, total, buffer.Length - total);
            if (n == 0)
                return false;
            total += n;
        }
        return true;
    }

    private static long CheckPrefix(long fileLength, string? fileName, byte[]? prefix)
    {
        if (fileLength < 8 || prefix is null)
            throw Invalid(fileName, $"the file is truncated: {Math.Max(0, fileLength)} bytes is too short for the 8-byte header length");
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (n > MaxHeaderLength)
            throw Invalid(fileName, $"header length {n} is absurd (more than the {MaxHeaderLength}-byte limit) — not a safetensors file?");
        if ((long)n > fileLength - 8)
            throw Invalid(fileName, $"header length {n} extends beyond the end of the file ({fileLength} bytes)");
        if (n < 2)
            throw Invalid(fileName, $"header length {n} is too short for a JSON object");
        return (long)n;
    }

    private static SafetensorsHeader Parse(byte[] raw, long fileLength, string? fileName)
    {
        if (raw[0] != (byte)'{')
            throw Invalid(fileName, "the header does not start with '{' — not a safetensors file?");
        long dataLength = fileLength - 8 - raw.Length;

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(raw.AsMemory(), new JsonDocumentOptions { MaxDepth = 16, AllowDuplicateProperties = false });
        }
        catch (JsonException e)
        {
            throw Invalid(fileName, $"the header is not valid JSON ({e.Message})");
        }

        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw Invalid(fileName, "the header is not a JSON object");

            var entries = new List<SafetensorsEntry>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            Dictionary<string, string>? metadata = null;
            bool metadataSeen = false;
            foreach (var property in root.EnumerateObject())
            {
                string name = property.Name;
                if (name == MetadataKey)
                {
                    if (metadataSeen)
                        throw Invalid(fileName, "duplicate '__metadata__' block");
                    metadataSeen = true;
                    metadata = ParseMetadata(property.Value, fileName);
                    continue;
                }
                if (!seen.Add(name))
                    throw Invalid(fileName, $"tensor '{name}' appears twice");
                entries.Add(ParseEntry(name, property.Value, dataLength, fileName));
            }

            // Stable sort by (begin, end): zero-length tensors sort before a tensor starting at the same offset.
            var ordered = entries.Select((e, i) => (e, i)).OrderBy(t => t.e.Begin).ThenBy(t => t.e.End).ThenBy(t => t.i)
                .Select(t => t.e).ToList();
            long expected = 0;
            SafetensorsEntry? previous = null;
            foreach (var entry in ordered)
            {
                if (entry.Begin < expected)
                    throw Invalid(fileName,
                        $"tensor '{entry.Name}' data_offsets [{entry.Begin}, {entry.End}] overlap tensor '{previous!.Name}' [{previous.Begin}, {previous.End}]");
                if (entry.Begin > expected)
                    throw Invalid(fileName,
                        $"tensor '{entry.Name}' starts at data offset {entry.Begin}, leaving bytes [{expected}, {entry.Begin}) of the data section unused (the tensors must be contiguous)");
                expected = entry.End;
                previous = entry;
            }
            if (expected != dataLength)
                throw Invalid(fileName,
                    $"the tensors cover {expected} bytes but the data section has {dataLength} (file length {fileLength}, data starts at {8 + raw.Length})");

            return new SafetensorsHeader(fileName, fileLength, raw, ordered, metadata);
        }
    }

    private static Dictionary<string, string>? ParseMetadata(JsonElement value, string? fileName)
    {
        if (value.ValueKind == JsonValueKind.Null)
            return null;
        if (value.ValueKind != JsonValueKind.Object)
            throw Invalid(fileName, "'__metadata__' must be an object of strings");
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var item in value.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
                throw Invalid(fileName, $"'__metadata__' value for '{item.Name}' is not a string");
            if (!metadata.TryAdd(item.Name, item.Value.GetString()!))
                throw Invalid(fileName, $"'__metadata__' has key '{item.Name}' twice");
        }
        return metadata;
    }

    private static SafetensorsEntry ParseEntry(string name, JsonElement value, long dataLength, string? fileName)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw Invalid(fileName, $"tensor '{name}': expected an object with dtype, shape and data_offsets");
        if (!value.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw Invalid(fileName, $"tensor '{name}': missing or non-string 'dtype'");
        string dtype = dtypeElement.GetString()!;
        if (!DTypeConversion.TryGetElementSize(dtype, out int elementSize))
            throw Invalid(fileName, $"tensor '{name}': unknown dtype '{dtype}'");
        if (!value.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
            throw Invalid(fileName, $"tensor '{name}': missing or non-array 'shape'");
        var shape = new long[shapeElement.GetArrayLength()];
        int k = 0;
        foreach (var d in shapeElement.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim) || dim < 0)
                throw Invalid(fileName, $"tensor '{name}': shape {shapeElement.GetRawText()} must hold non-negative integers");
            shape[k++] = dim;
        }
        if (!value.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array ||
            offsets.GetArrayLength() != 2)
            throw Invalid(fileName, $"tensor '{name}': missing 'data_offsets' (expected [begin, end])");
        long begin = ReadOffset(offsets[0]), end = ReadOffset(offsets[1]);
        if (begin < 0 || end < 0)
            throw Invalid(fileName, $"tensor '{name}': data_offsets {offsets.GetRawText()} must be non-negative integers");
        if (end < begin)
            throw Invalid(fileName, $"tensor '{name}': data_offsets [{begin}, {end}] end before they begin");
        if (end > dataLength)
            throw Invalid(fileName, $"tensor '{name}': data_offsets [{begin}, {end}] are out of bounds: the data section has only {dataLength} bytes (truncated file?)");
        long expectedBytes;
        try
        {
            expectedBytes = checked(ShapeMath.ElementCount(shape) * elementSize);
        }
        catch (OverflowException)
        {
            throw Invalid(fileName, $"tensor '{name}': shape {ShapeMath.Format(shape)} is too large");
        }
        if (end - begin != expectedBytes)
            throw Invalid(fileName,
                $"tensor '{name}': byte length {end - begin} (data_offsets [{begin}, {end}]) does not match shape {ShapeMath.Format(shape)} × {elementSize} bytes ({dtype}) = {expectedBytes}");
        return new SafetensorsEntry(name, dtype, shape, begin, end);

        static long ReadOffset(JsonElement e) =>
            e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out long v) ? v : -1;
    }

    internal static string Prefix(string? fileName) => fileName is null ? "safetensors: " : fileName + ": ";

    private static InvalidDataException Invalid(string? fileName, string problem) => new(Prefix(fileName) + problem + ".");
}
