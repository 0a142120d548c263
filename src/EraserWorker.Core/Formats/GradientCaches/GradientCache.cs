using System.Buffers;
using System.Runtime.InteropServices;
using System.Text;
using EraserWorker.Core.Formats.Safetensors;
using Microsoft.Win32.SafeHandles;

namespace EraserWorker.Core.Formats.GradientCaches;

/// <summary>
/// A read-only <c>eraser.gradcache/v1</c> gradient cache folder (SPEC §2), validated on <see cref="Open"/> and read by
/// streaming: rows are fetched with positioned reads (one open handle per shard), converted from the storage dtype
/// to <see cref="float"/> and checked for non-finite values on the way.
/// </summary>
/// <remarks>
/// <para>A <em>replacement set</em> (SPEC §2) uses exactly this format; its ids name the training samples it replaces.
/// Open it with this class too.</para>
/// <para>Row order is shard order, then row order within each shard (the order of the ids files).</para>
/// <para><see cref="ReadRows"/>, <see cref="ReadRowDouble"/> and the other members are safe to call concurrently;
/// <see cref="Dispose"/> must not race with reads.</para>
/// </remarks>
public sealed class GradientCache : IDisposable
{
    private const int ChunkBytes = 256 << 10;

    private readonly Shard[] _shards;
    private readonly int[] _lookupStarts; // first row of each non-empty shard, for binary search
    private readonly Shard[] _lookupShards;
    private readonly string[] _ids;
    private readonly Dictionary<string, int> _rowOf;
    private readonly ParameterLayout _layout;
    private readonly long _rowBytes;
    private readonly string _label;
    private volatile bool _disposed;

    private sealed record Shard(string File, string IdsFile, SafeFileHandle Handle, SafetensorsHeader Header,
        long GradientsOffset, long CurvatureOffset, int FirstRow, int Rows);

    private GradientCache(string directory, string label, GradientCacheManifest manifest, Shard[] shards, string[] ids,
        Dictionary<string, int> rowOf, string dtype, bool hasCurvature)
    {
        Directory = directory;
        _label = label;
        Manifest = manifest;
        _shards = shards;
        _ids = ids;
        _rowOf = rowOf;
        StorageDType = dtype;
        HasCurvature = hasCurvature;
        _layout = new ParameterLayout(manifest.Parameters);
        ParameterCount = _layout.Total;
        _rowBytes = ParameterCount * DTypeConversion.ElementSize(dtype);
        var nonEmpty = shards.Where(s => s.Rows > 0).ToArray();
        _lookupShards = nonEmpty;
        _lookupStarts = nonEmpty.Select(s => s.FirstRow).ToArray();
    }

    /// <summary>Full path of the cache folder.</summary>
    public string Directory { get; }

    public GradientCacheManifest Manifest { get; }

    /// <summary>θ's tensors, in θ's order.</summary>
    public IReadOnlyList<ParameterSpec> Parameters => Manifest.Parameters;

    /// <summary>P: the length of θ and of every row.</summary>
    public long ParameterCount { get; }

    /// <summary>n: the number of samples (rows) over all shards.</summary>
    public int RowCount => _ids.Length;

    /// <summary>Whether the shards hold <c>curvature</c> rows. When not, curvature reads return the gradients.</summary>
    public bool HasCurvature { get; }

    /// <summary>The dtype all shards store rows in: F32, F16 or BF16.</summary>
    public string StorageDType { get; }

    /// <summary>The objective's L2 weight (cache.json <c>l2</c>).</summary>
    public double L2 => Manifest.L2;

    /// <summary>Sample ids in row order.</summary>
    public IReadOnlyList<string> Ids => _ids;

    /// <summary>Row of sample <paramref name="id"/> (ordinal comparison).</summary>
    public bool TryGetRow(string id, out int row) => _rowOf.TryGetValue(id, out row);

    /// <summary>Opens and validates a cache folder. Nothing is written anywhere.</summary>
    /// <exception cref="GradientCacheException">The folder is not a valid cache; the message names the cache, the file
    /// and the problem.</exception>
    public static GradientCache Open(string directory)
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        string full = Path.GetFullPath(directory);
        string label = $"Gradient cache '{directory}'";
        if (!System.IO.Directory.Exists(full))
            throw new GradientCacheException($"{label}: the folder does not exist.");

        var opened = new List<SafeFileHandle>();
        try
        {
            var manifest = GradientCacheManifest.Load(Path.Combine(full, GradientCacheManifest.FileName));
            long p = manifest.ParameterCount;
            var shards = new Shard[manifest.Shards.Count];
            var ids = new List<string>();
            var rowOf = new Dictionary<string, int>(StringComparer.Ordinal);
            string? dtype = null;
            bool? hasCurvature = null;
            for (int s = 0; s < shards.Length; s++)
            {
                var (file, idsFile) = manifest.Shards[s];
                string path = Path.Combine(full, file);
                if (!File.Exists(path))
                    throw Problem(file, "missing (listed in cache.json)");
                var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
                opened.Add(handle);
                var header = SafetensorsHeader.Read(handle, file);

                if (!header.TryGet("gradients", out var gradients))
                    throw Problem(file, "has no 'gradients' tensor");
                if (gradients.Shape.Count != 2)
                    throw Problem(file, $"'gradients' has shape {ShapeMath.Format(gradients.Shape)}; expected 2-D [rows, P] with P = {p}");
                if (!DTypeConversion.IsStorageFloat(gradients.DType))
                    throw Problem(file, $"'gradients' is stored as {gradients.DType}; expected F32, F16 or BF16");
                if (gradients.Shape[1] != p)
                    throw Problem(file,
                        $"'gradients' has {gradients.Shape[1]} columns but the parameters in cache.json total P = {p}");
                if (dtype is null)
                    dtype = gradients.DType;
                else if (dtype != gradients.DType)
                    throw Problem(file, $"stores {gradients.DType} but {manifest.Shards[0].File} stores {dtype} (all shards must agree)");

                header.TryGet("curvature", out var curvature);
                if (hasCurvature is null)
                    hasCurvature = curvature is not null;
                else if (hasCurvature != (curvature is not null))
                    throw Problem(file, curvature is not null
                        ? $"has a 'curvature' tensor but {manifest.Shards[0].File} has none (all shards or none)"
                        : $"has no 'curvature' tensor but {manifest.Shards[0].File} has one (all shards or none)");
                if (curvature is not null)
                {
                    if (!curvature.Shape.SequenceEqual(gradients.Shape))
                        throw Problem(file, $"'curvature' has shape {ShapeMath.Format(curvature.Shape)} but 'gradients' has {ShapeMath.Format(gradients.Shape)}");
                    if (curvature.DType != gradients.DType)
                        throw Problem(file, $"'curvature' is stored as {curvature.DType} but 'gradients' as {gradients.DType}");
                }

                long rows = gradients.Shape[0];
                if (ids.Count + rows > Array.MaxLength)
                    throw Problem(file, "too many rows in total");
                string idsPath = Path.Combine(full, idsFile);
                if (!File.Exists(idsPath))
                    throw Problem(idsFile, "missing (listed in cache.json)");
                var shardIds = ReadIds(idsPath, idsFile);
                if (shardIds.Count != rows)
                    throw Problem(idsFile, $"has {shardIds.Count} ids but {file} has {rows} rows");
                for (int k = 0; k < shardIds.Count; k++)
                {
                    if (rowOf.TryGetValue(shardIds[k], out int previous))
                    {
                        var (prevShard, prevLine) = previous >= ids.Count
                            ? (idsFile, previous - ids.Count + 1)
                            : Locate(shards, previous);
                        throw Problem(idsFile, $"line {k + 1}: duplicate sample id '{shardIds[k]}' (already at line {prevLine} of {prevShard})");
                    }
                    rowOf.Add(shardIds[k], ids.Count + k);
                }

                shards[s] = new Shard(file, idsFile, handle, header, header.FileOffsetOf(gradients),
                    curvature is null ? -1 : header.FileOffsetOf(curvature), ids.Count, (int)rows);
                ids.AddRange(shardIds);
            }
            return new GradientCache(full, label, manifest, shards, ids.ToArray(), rowOf, dtype!, hasCurvature ?? false);
        }
        catch (Exception e) when (e is InvalidDataException or GradientCacheException)
        {
            foreach (var h in opened)
                h.Dispose();
            throw new GradientCacheException($"{label}: {e.Message}", e);
        }
        catch
        {
            foreach (var h in opened)
                h.Dispose();
            throw;
        }

        static (string File, int Line) Locate(Shard?[] shards, int row)
        {
            foreach (var s in shards)
                if (s is not null && row >= s.FirstRow && row < s.FirstRow + s.Rows)
                    return (s.IdsFile, row - s.FirstRow + 1);
            throw new InvalidOperationException("unreachable");
        }
    }

    /// <summary>
    /// Reads rows [<paramref name="firstRow"/>, <paramref name="firstRow"/> + <paramref name="rowCount"/>) of
    /// <paramref name="which"/> (they may span shards) as float32 into the first <c>rowCount × P</c> elements of
    /// <paramref name="destination"/>, row-major. <see cref="CacheMatrix.Curvature"/> on a cache without curvature
    /// rows reads the gradients (SPEC §1: cᵢ = gᵢ).
    /// </summary>
    /// <exception cref="GradientCacheException">A value is NaN or ±∞ (the message names the sample id), or a shard
    /// file is shorter than its header says.</exception>
    public void ReadRows(CacheMatrix which, int firstRow, int rowCount, Span<float> destination)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (firstRow < 0 || rowCount < 0 || firstRow > RowCount - rowCount)
            throw new ArgumentOutOfRangeException(nameof(firstRow),
                $"Rows [{firstRow}, {(long)firstRow + rowCount}) are outside the cache's {RowCount} rows.");
        long need = rowCount * ParameterCount;
        if (destination.Length < need)
            throw new ArgumentException($"{rowCount} rows need {need} floats but the destination holds {destination.Length}.", nameof(destination));
        bool curvature = which == CacheMatrix.Curvature && HasCurvature;

        int row = firstRow, remaining = rowCount;
        var dst = destination[..(int)need];
        while (remaining > 0)
        {
            var shard = ShardOf(row);
            int local = row - shard.FirstRow;
            int take = Math.Min(remaining, shard.Rows - local);
            long offset = (curvature ? shard.CurvatureOffset : shard.GradientsOffset) + local * _rowBytes;
            int elements = (int)(take * ParameterCount);
            ReadElements(shard, offset, dst[..elements], row, curvature);
            dst = dst[elements..];
            row += take;
            remaining -= take;
        }
    }

    /// <summary>Bytes of one row in the storage dtype: P × <see cref="ElementSize"/>.</summary>
    public long RowBytes => _rowBytes;

    /// <summary>Bytes per stored element (<see cref="StorageDType"/>).</summary>
    public int ElementSize => DTypeConversion.ElementSize(StorageDType);

    /// <summary>
    /// Reads rows [<paramref name="firstRow"/>, <paramref name="firstRow"/> + <paramref name="rowCount"/>) of
    /// <paramref name="which"/> as stored (<see cref="StorageDType"/>, little-endian, row-major) into the first
    /// <c>rowCount × </c><see cref="RowBytes"/> bytes of <paramref name="destination"/>: no conversion, one positioned
    /// read per shard. Values are checked for NaN and ±∞ in place, as <see cref="ReadRows"/> does.
    /// </summary>
    /// <exception cref="GradientCacheException">A non-finite value (the message names the sample id), or a shard file
    /// shorter than its header says.</exception>
    public void ReadRowsRaw(CacheMatrix which, int firstRow, int rowCount, Span<byte> destination)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (firstRow < 0 || rowCount < 0 || firstRow > RowCount - rowCount)
            throw new ArgumentOutOfRangeException(nameof(firstRow),
                $"Rows [{firstRow}, {(long)firstRow + rowCount}) are outside the cache's {RowCount} rows.");
        long need = rowCount * _rowBytes;
        if (destination.Length < need)
            throw new ArgumentException($"{rowCount} rows need {need} bytes but the destination holds {destination.Length}.", nameof(destination));
        bool curvature = which == CacheMatrix.Curvature && HasCurvature;
        int row = firstRow, remaining = rowCount;
        var dst = destination[..(int)need];
        while (remaining > 0)
        {
            var shard = ShardOf(row);
            int local = row - shard.FirstRow;
            int take = Math.Min(remaining, shard.Rows - local);
            long offset = (curvature ? shard.CurvatureOffset : shard.GradientsOffset) + local * _rowBytes;
            int bytes = (int)(take * _rowBytes);
            ReadRaw(shard, offset, dst[..bytes], row, 0, curvature);
            dst = dst[bytes..];
            row += take;
            remaining -= take;
        }
    }

    /// <summary>
    /// Reads columns [<paramref name="firstColumn"/>, <paramref name="firstColumn"/> + <paramref name="columnCount"/>)
    /// of one row of <paramref name="which"/> as stored (see <see cref="ReadRowsRaw"/>) into the first
    /// <c>columnCount × </c><see cref="ElementSize"/> bytes of <paramref name="destination"/>: one positioned read.
    /// </summary>
    public void ReadRowSegmentRaw(CacheMatrix which, int row, long firstColumn, int columnCount, Span<byte> destination)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (row < 0 || row >= RowCount)
            throw new ArgumentOutOfRangeException(nameof(row), $"Row {row} is outside the cache's {RowCount} rows.");
        if (firstColumn < 0 || columnCount < 0 || firstColumn > ParameterCount - columnCount)
            throw new ArgumentOutOfRangeException(nameof(firstColumn),
                $"Columns [{firstColumn}, {firstColumn + columnCount}) are outside the cache's P = {ParameterCount}.");
        int size = ElementSize;
        long need = (long)columnCount * size;
        if (destination.Length < need)
            throw new ArgumentException($"{columnCount} columns need {need} bytes but the destination holds {destination.Length}.", nameof(destination));
        bool curvature = which == CacheMatrix.Curvature && HasCurvature;
        var shard = ShardOf(row);
        long offset = (curvature ? shard.CurvatureOffset : shard.GradientsOffset) + (row - shard.FirstRow) * _rowBytes + firstColumn * size;
        ReadRaw(shard, offset, destination[..(int)need], row, firstColumn, curvature);
    }

    /// <summary>One positioned read of stored elements, checked for non-finite values in place.</summary>
    private void ReadRaw(Shard shard, long offset, Span<byte> destination, int firstRow, long firstColumn, bool curvature)
    {
        try
        {
            FileRead.ReadExactly(shard.Handle, destination, offset, shard.File);
        }
        catch (InvalidDataException e)
        {
            throw new GradientCacheException($"{_label}: {e.Message}", e);
        }
        int bad = DTypeConversion.IndexOfNonFinite(StorageDType, destination);
        if (bad >= 0)
        {
            Span<float> value = stackalloc float[1];
            int size = ElementSize;
            DTypeConversion.ToSingle(StorageDType, destination.Slice(bad * size, size), value);
            throw NonFinite(shard, firstRow, firstColumn + bad, value[0], curvature);
        }
    }

    /// <summary>One row of <paramref name="which"/> as float64 (exactly the stored values).</summary>
    public double[] ReadRowDouble(CacheMatrix which, int row)
    {
        if (ParameterCount > Array.MaxLength)
            throw new NotSupportedException($"Rows of {ParameterCount} elements do not fit in an array.");
        int p = (int)ParameterCount;
        float[] buffer = ArrayPool<float>.Shared.Rent(p);
        try
        {
            var values = buffer.AsSpan(0, p);
            ReadRows(which, row, 1, values);
            var result = new double[p];
            DTypeConversion.SingleToDouble(values, result);
            return result;
        }
        finally
        {
            ArrayPool<float>.Shared.Return(buffer);
        }
    }

    /// <summary>Row ranges of at most <paramref name="rowsPerChunk"/> rows covering the cache in order.</summary>
    public IEnumerable<(int FirstRow, int RowCount)> Chunks(int rowsPerChunk)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rowsPerChunk, 1);
        int n = RowCount;
        return Iterate();

        IEnumerable<(int, int)> Iterate()
        {
            for (int first = 0; first < n; first += rowsPerChunk)
                yield return (first, Math.Min(rowsPerChunk, n - first));
        }
    }

    /// <summary>Closes the shard files.</summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        foreach (var s in _shards)
            s.Handle.Dispose();
    }

    private Shard ShardOf(int row)
    {
        int i = Array.BinarySearch(_lookupStarts, row);
        return _lookupShards[i >= 0 ? i : ~i - 1];
    }

    private void ReadElements(Shard shard, long offset, Span<float> destination, int firstRow, bool curvature)
    {
        int size = DTypeConversion.ElementSize(StorageDType);
        int chunkElements = ChunkBytes / size;
        byte[]? staging = StorageDType == DTypeConversion.F32 ? null : ArrayPool<byte>.Shared.Rent(ChunkBytes);
        try
        {
            for (int done = 0; done < destination.Length; done += chunkElements)
            {
                var part = destination.Slice(done, Math.Min(chunkElements, destination.Length - done));
                long at = offset + (long)done * size;
                if (staging is null)
                {
                    FileRead.ReadExactly(shard.Handle, MemoryMarshal.AsBytes(part), at, shard.File);
                }
                else
                {
                    var raw = staging.AsSpan(0, part.Length * size);
                    FileRead.ReadExactly(shard.Handle, raw, at, shard.File);
                    DTypeConversion.ToSingle(StorageDType, raw, part);
                }
                int bad = DTypeConversion.IndexOfNonFinite(part);
                if (bad >= 0)
                    throw NonFinite(shard, firstRow, done + (long)bad, part[bad], curvature);
            }
        }
        catch (InvalidDataException e)
        {
            throw new GradientCacheException($"{_label}: {e.Message}", e);
        }
        finally
        {
            if (staging is not null)
                ArrayPool<byte>.Shared.Return(staging);
        }
    }

    private GradientCacheException NonFinite(Shard shard, int firstRow, long index, float value, bool curvature)
    {
        int row = firstRow + (int)(index / ParameterCount);
        string what = curvature ? "curvature" : "gradients";
        string shown = float.IsNaN(value) ? "NaN" : value > 0 ? "+∞" : "−∞";
        return new GradientCacheException(
            $"{_label}: {shard.File}: non-finite value {shown} in the {what} of sample '{_ids[row]}' (row {row}, {_layout.Describe(index % ParameterCount)}).");
    }

    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    /// <summary>Reads an ids file: strict UTF-8 (a leading BOM is ignored), one id per line, '\n'-separated, an
    /// optional final newline; every id must satisfy <see cref="SampleIds"/>.</summary>
    private static List<string> ReadIds(string path, string fileName)
    {
        byte[] bytes = File.ReadAllBytes(path);
        string text;
        try
        {
            text = StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException e)
        {
            throw Problem(fileName, $"not valid UTF-8 (at byte {e.Index})");
        }
        if (text.StartsWith('\uFEFF'))
            text = text[1..];
        var ids = new List<string>();
        if (text.Length == 0)
            return ids;
        var lines = text.Split('\n');
        int count = lines[^1].Length == 0 ? lines.Length - 1 : lines.Length;
        for (int k = 0; k < count; k++)
        {
            string? problem = SampleIds.Problem(lines[k]);
            if (problem is not null)
                throw Problem(fileName, $"line {k + 1}: {problem}");
            ids.Add(lines[k]);
        }
        return ids;
    }

    private static GradientCacheException Problem(string file, string problem) => new($"{file}: {problem}.");
}
