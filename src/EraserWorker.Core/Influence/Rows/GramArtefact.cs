using System.Buffers.Binary;
using System.Security.Cryptography;
using EraserWorker.Core.Formats.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Rows;

/// <summary>
/// The Gram kept beside its cache as a derived file, <c>&lt;cache&gt;/derived/gram.safetensors</c>: one F64 tensor
/// <c>gram</c> [n, n] and metadata naming what it was built from — format <c>eraser.gram/v1</c>, the rows' content
/// digest (<see cref="RowsDigest"/>), matrix, storage dtype, n, P, the arithmetic — and the SHA-256 of the tensor's
/// bytes. A file is used only when all of these match and its bytes hash to the recorded SHA-256; anything else is
/// stale or corrupt and is rebuilt (and overwritten). Written to a temporary file and renamed into place.
/// </summary>
internal static class GramArtefact
{
    public const string Format = "eraser.gram/v1";
    public const string Directory = "derived";
    public const string FileName = "gram.safetensors";
    private const string Arithmetic = "float64";

    /// <summary>What a Gram must have been built from to be reused.</summary>
    public sealed record Identity(string RowsDigest, string Matrix, string DType, long Rows, long Parameters);

    public static string PathFor(string cacheDirectory) => Path.Combine(cacheDirectory, Directory, FileName);

    /// <summary>Loads the Gram at <paramref name="path"/> when it matches <paramref name="expected"/> and its checksum.</summary>
    /// <returns>The Gram on <paramref name="device"/> (caller owns it), or null with the reason it was rejected.</returns>
    public static Tensor? TryLoad(string path, Identity expected, Device device, out string? rejected)
    {
        rejected = null;
        if (!File.Exists(path))
        {
            rejected = "none saved";
            return null;
        }
        try
        {
            var header = SafetensorsHeader.ReadFile(path);
            var meta = header.Metadata ?? new Dictionary<string, string>();
            string? Get(string key) => meta.TryGetValue(key, out var v) ? v : null;
            long n = expected.Rows;
            rejected = Get("format") != Format ? $"format '{Get("format")}' is not {Format}"
                : Get("arithmetic") != Arithmetic ? $"arithmetic '{Get("arithmetic")}' is not {Arithmetic}"
                : Get("matrix") != expected.Matrix ? $"built from the {Get("matrix")} rows, not the {expected.Matrix} rows"
                : Get("dtype") != expected.DType ? $"built from {Get("dtype")} rows, not {expected.DType}"
                : Get("rows") != n.ToString() || Get("parameters") != expected.Parameters.ToString()
                    ? $"built for n = {Get("rows")}, P = {Get("parameters")}, not n = {n}, P = {expected.Parameters}"
                : Get("rowsDigest") != expected.RowsDigest ? "stale: built from rows with different content"
                : !header.TryGet("gram", out var entry) || entry.DType != DTypeConversion.F64 || entry.Shape.Count != 2 ||
                  entry.Shape[0] != n || entry.Shape[1] != n ? "no F64 'gram' tensor of shape [n, n]"
                : null;
            if (rejected is not null)
                return null;
            var gram = torch.empty(n, n, dtype: ScalarType.Float64);
            try
            {
                using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
                using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                long offset = header.FileOffsetOf(header["gram"]);
                foreach (var (first, count) in RowRanges(n))
                {
                    using var rows = gram.narrow(0, first, count);
                    var bytes = rows.bytes;
                    FileRead.ReadExactly(file, bytes, offset, FileName);
                    sha.AppendData(bytes);
                    offset += bytes.Length;
                }
                if (Convert.ToHexStringLower(sha.GetHashAndReset()) != Get("gramSha256"))
                {
                    rejected = "corrupt: its bytes do not match the recorded SHA-256";
                    gram.Dispose();
                    return null;
                }
                if (device.type == DeviceType.CPU)
                    return gram.DetachFromDisposeScope();
                using (gram)
                    return gram.to(device).DetachFromDisposeScope();
            }
            catch
            {
                gram.Dispose();
                throw;
            }
        }
        catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException)
        {
            rejected = $"unreadable ({e.Message})";
            return null;
        }
    }

    /// <summary>Writes <paramref name="gram"/> with its identity; returns null on success, else why it could not be saved
    /// (a read-only cache folder is not an error: the Gram is then rebuilt by the next process).</summary>
    public static string? TrySave(string path, Tensor gram, Identity identity)
    {
        string? temp = null;
        try
        {
            using var scope = torch.NewDisposeScope();
            var cpu = gram.cpu().contiguous();
            long n = cpu.shape[0];
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            foreach (var (first, count) in RowRanges(n))
            {
                using var rows = cpu.narrow(0, first, count);
                sha.AppendData(rows.bytes);
            }
            var metadata = new Dictionary<string, string>
            {
                ["format"] = Format,
                ["rowsDigest"] = identity.RowsDigest,
                ["matrix"] = identity.Matrix,
                ["dtype"] = identity.DType,
                ["rows"] = identity.Rows.ToString(),
                ["parameters"] = identity.Parameters.ToString(),
                ["arithmetic"] = Arithmetic,
                ["gramSha256"] = Convert.ToHexStringLower(sha.GetHashAndReset()),
            };
            byte[] header = SafetensorsWriter.BuildHeader([new SafetensorsEntry("gram", DTypeConversion.F64, [n, n], 0, n * n * 8)], metadata);
            string directory = Path.GetDirectoryName(path)!;
            System.IO.Directory.CreateDirectory(directory);
            temp = Path.Combine(directory, $".{FileName}.tmp-{Guid.NewGuid():N}");
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                Span<byte> prefix = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
                stream.Write(prefix);
                stream.Write(header);
                foreach (var (first, count) in RowRanges(n))
                {
                    using var rows = cpu.narrow(0, first, count);
                    stream.Write(rows.bytes);
                }
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, path, overwrite: true);
            temp = null;
            return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return e.Message;
        }
        finally
        {
            if (temp is not null)
                try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>Row ranges of the n × n matrix below 1 GiB each (spans stay within int range).</summary>
    private static IEnumerable<(long First, long Count)> RowRanges(long n)
    {
        long step = Math.Max(1, (1L << 30) / Math.Max(1, n * 8));
        for (long first = 0; first < n; first += step)
            yield return (first, Math.Min(step, n - first));
    }
}
