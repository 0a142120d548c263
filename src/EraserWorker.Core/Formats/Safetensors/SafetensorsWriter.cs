using System.Buffers;
using System.Buffers.Binary;
using System.Numerics;
using System.Text.Encodings.Web;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;

namespace EraserWorker.Core.Formats.Safetensors;

/// <summary>Writes safetensors files in the standard layout, and rewrites existing files with some tensors replaced.</summary>
public static class SafetensorsWriter
{
    private const int CopyBufferBytes = 1 << 20;

    /// <summary>
    /// Writes a complete safetensors file to <paramref name="output"/>: the 8-byte header length, the compact JSON
    /// header (<c>__metadata__</c> first when given, then the tensors in the given order, padded with spaces to a
    /// multiple of 8 bytes as the reference writer does), then each tensor's bytes contiguously in the given order.
    /// </summary>
    /// <param name="tensors">Names must be unique and not <c>__metadata__</c>; each <c>Data</c> must be exactly
    /// shape × element size bytes (little-endian, row-major).</param>
    public static void Write(Stream output,
        IReadOnlyList<(string Name, string DType, IReadOnlyList<long> Shape, ReadOnlyMemory<byte> Data)> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(tensors);
        var layout = new List<SafetensorsEntry>(tensors.Count);
        long offset = 0;
        foreach (var (name, dtype, shape, data) in tensors)
        {
            long bytes = CheckTensor(name, dtype, shape);
            if (data.Length != bytes)
                throw new ArgumentException(
                    $"Tensor '{name}': {dtype}{ShapeMath.Format(shape)} needs {bytes} bytes, but {data.Length} were given.", nameof(tensors));
            layout.Add(new SafetensorsEntry(name, dtype, shape, offset, offset + bytes));
            offset += bytes;
        }
        byte[] header = BuildHeader(layout, metadata);
        Span<byte> prefix = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
        output.Write(prefix);
        output.Write(header);
        foreach (var tensor in tensors)
            output.Write(tensor.Data.Span);
    }

    /// <summary>Writes a safetensors file to <paramref name="path"/> (which must not exist yet).</summary>
    public static void WriteFile(string path,
        IReadOnlyList<(string Name, string DType, IReadOnlyList<long> Shape, ReadOnlyMemory<byte> Data)> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, CopyBufferBytes);
        Write(stream, tensors, metadata);
        stream.Flush(flushToDisk: true);
    }

    /// <summary>
    /// Copies <paramref name="sourcePath"/> to <paramref name="destinationPath"/> (which must not exist): the header
    /// bytes verbatim (keys, shapes, dtypes, offsets, metadata and padding unchanged) and every tensor's bytes
    /// bit-for-bit, except the tensors named in <paramref name="replacements"/>, which are encoded in their original
    /// dtype (F32, F16 or BF16; rounded to nearest even).
    /// </summary>
    /// <exception cref="ArgumentException">A replacement names no tensor, has a different element count, targets a
    /// dtype other than F32/F16/BF16, or holds a value that is NaN/∞ or overflows that dtype.</exception>
    /// <exception cref="IOException">The destination exists. On any failure the destination is removed.</exception>
    public static void RewriteWith(string sourcePath, string destinationPath, IReadOnlyDictionary<string, ReadOnlyMemory<float>> replacements) =>
        RewriteWith(sourcePath, destinationPath, replacements, DTypeConversion.IndexOfNotRepresentable, DTypeConversion.FromSingle);

    /// <inheritdoc cref="RewriteWith(string, string, IReadOnlyDictionary{string, ReadOnlyMemory{float}})"/>
    /// <remarks>Values are rounded once, directly from double precision, to the tensor's dtype.</remarks>
    public static void RewriteWith(string sourcePath, string destinationPath, IReadOnlyDictionary<string, ReadOnlyMemory<double>> replacements) =>
        RewriteWith(sourcePath, destinationPath, replacements, DTypeConversion.IndexOfNotRepresentable, DTypeConversion.FromDouble);

    private delegate int FindNotRepresentable<T>(string dtype, ReadOnlySpan<T> values);

    private delegate void Encode<T>(string dtype, ReadOnlySpan<T> values, Span<byte> destination);

    /// <summary>The float and double overloads: every replacement checked before anything is written, then encoded
    /// chunk by chunk while the rest of the file is copied.</summary>
    private static void RewriteWith<T>(string sourcePath, string destinationPath, IReadOnlyDictionary<string, ReadOnlyMemory<T>> replacements,
        FindNotRepresentable<T> findNotRepresentable, Encode<T> encode) where T : INumberBase<T>
    {
        ArgumentNullException.ThrowIfNull(replacements);
        var header = SafetensorsHeader.ReadFile(sourcePath);
        var plan = new Dictionary<string, EncodeChunk>(StringComparer.Ordinal);
        foreach (var (name, values) in replacements)
        {
            var entry = CheckReplacement(header, name, values.Length);
            int bad = findNotRepresentable(entry.DType, values.Span);
            if (bad >= 0)
                throw NotRepresentable(header, entry, bad, double.CreateTruncating(values.Span[bad]));
            plan.Add(name, (elementOffset, dst) =>
                encode(entry.DType, values.Span.Slice((int)elementOffset, dst.Length / entry.ElementSize), dst));
        }
        RewriteCore(sourcePath, destinationPath, header, plan);
    }

    private delegate void EncodeChunk(long elementOffset, Span<byte> destination);

    private static SafetensorsEntry CheckReplacement(SafetensorsHeader header, string name, int count)
    {
        string prefix = SafetensorsHeader.Prefix(header.FileName);
        if (!header.TryGet(name, out var entry))
            throw new ArgumentException($"{prefix}cannot replace tensor '{name}': the file has no such tensor.", nameof(name));
        if (!DTypeConversion.IsStorageFloat(entry.DType))
            throw new ArgumentException(
                $"{prefix}cannot replace tensor '{name}': its dtype is {entry.DType} (only F32, F16 and BF16 tensors can be replaced).", nameof(name));
        if (entry.ElementCount != count)
            throw new ArgumentException(
                $"{prefix}cannot replace tensor '{name}': it has {entry.ElementCount} elements (shape {ShapeMath.Format(entry.Shape)}) but the replacement has {count}.", nameof(name));
        return entry;
    }

    private static ArgumentException NotRepresentable(SafetensorsHeader header, SafetensorsEntry entry, int index, double value) =>
        new($"{SafetensorsHeader.Prefix(header.FileName)}cannot replace tensor '{entry.Name}': element {index} is {value}, which is not a finite {entry.DType} value.");

    private static void RewriteCore(string sourcePath, string destinationPath, SafetensorsHeader header, Dictionary<string, EncodeChunk> plan)
    {
        string fileName = header.FileName ?? Path.GetFileName(sourcePath);
        using var source = File.OpenHandle(sourcePath, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
        if (RandomAccess.GetLength(source) != header.FileLength)
            throw new IOException($"{fileName}: the file changed while it was being rewritten.");

        var output = new FileStream(destinationPath, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 0);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(CopyBufferBytes);
        try
        {
            // Header: copied from the file, and checked against what was parsed.
            byte[] prefix = new byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.RawHeaderBytes.Length);
            var headerBytes = new byte[header.DataStart];
            FileRead.ReadExactly(source, headerBytes, 0, fileName);
            if (!headerBytes.AsSpan(0, 8).SequenceEqual(prefix) || !headerBytes.AsSpan(8).SequenceEqual(header.RawHeaderBytes.Span))
                throw new IOException($"{fileName}: the file changed while it was being rewritten.");
            output.Write(headerBytes);

            long copyFrom = -1, copyTo = -1; // pending run of unchanged tensors, as data offsets
            foreach (var entry in header.Entries)
            {
                if (!plan.TryGetValue(entry.Name, out var encode))
                {
                    if (copyFrom < 0)
                        copyFrom = entry.Begin;
                    copyTo = entry.End;
                    continue;
                }
                if (copyFrom >= 0)
                    Copy(source, header.DataStart + copyFrom, copyTo - copyFrom, output, buffer, fileName);
                copyFrom = copyTo = -1;

                int size = entry.ElementSize;
                int chunkElements = CopyBufferBytes / size;
                for (long done = 0; done < entry.ElementCount; done += chunkElements)
                {
                    int count = (int)Math.Min(chunkElements, entry.ElementCount - done);
                    var chunk = buffer.AsSpan(0, count * size);
                    encode(done, chunk);
                    output.Write(chunk);
                }
            }
            if (copyFrom >= 0)
                Copy(source, header.DataStart + copyFrom, copyTo - copyFrom, output, buffer, fileName);

            if (output.Length != header.FileLength)
                throw new IOException($"{fileName}: rewrite produced {output.Length} bytes instead of {header.FileLength}.");
            output.Flush(flushToDisk: true);
            output.Dispose();
        }
        catch
        {
            output.Dispose();
            TryDelete(destinationPath);
            throw;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static void Copy(SafeFileHandle source, long offset, long length, Stream output, byte[] buffer, string fileName)
    {
        while (length > 0)
        {
            var chunk = buffer.AsSpan(0, (int)Math.Min(CopyBufferBytes, length));
            FileRead.ReadExactly(source, chunk, offset, fileName);
            output.Write(chunk);
            offset += chunk.Length;
            length -= chunk.Length;
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    /// <summary>Validates a tensor description; returns its byte length.</summary>
    internal static long CheckTensor(string name, string dtype, IReadOnlyList<long> shape)
    {
        if (string.IsNullOrEmpty(name) || name == "__metadata__")
            throw new ArgumentException($"Invalid tensor name '{name}'.");
        if (!DTypeConversion.TryGetElementSize(dtype, out int size))
            throw new ArgumentException($"Tensor '{name}': unknown dtype '{dtype}'.");
        if (shape.Any(d => d < 0))
            throw new ArgumentException($"Tensor '{name}': shape {ShapeMath.Format(shape)} has a negative dimension.");
        try
        {
            return checked(ShapeMath.ElementCount(shape) * size);
        }
        catch (OverflowException)
        {
            throw new ArgumentException($"Tensor '{name}': shape {ShapeMath.Format(shape)} is too large.");
        }
    }

    /// <summary>
    /// The compact JSON header for <paramref name="entries"/> (in the given order), padded with spaces to a multiple of
    /// 8 bytes and to at least <paramref name="minimumLength"/> bytes (which must itself be a multiple of 8).
    /// Duplicate names are rejected.
    /// </summary>
    internal static byte[] BuildHeader(IReadOnlyList<SafetensorsEntry> entries, IReadOnlyDictionary<string, string>? metadata,
        int minimumLength = 0)
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        var buffer = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            if (metadata is not null)
            {
                json.WriteStartObject("__metadata__");
                foreach (var (key, value) in metadata)
                    json.WriteString(key, value);
                json.WriteEndObject();
            }
            foreach (var e in entries)
            {
                if (!names.Add(e.Name))
                    throw new ArgumentException($"Tensor '{e.Name}' is listed twice.");
                CheckTensor(e.Name, e.DType, e.Shape);
                json.WriteStartObject(e.Name);
                json.WriteString("dtype", e.DType);
                json.WriteStartArray("shape");
                foreach (long d in e.Shape)
                    json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(e.Begin);
                json.WriteNumberValue(e.End);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        int length = Math.Max((buffer.WrittenCount + 7) / 8 * 8, minimumLength);
        byte[] header = new byte[length];
        buffer.WrittenSpan.CopyTo(header);
        header.AsSpan(buffer.WrittenCount).Fill((byte)' ');
        return header;
    }
}
