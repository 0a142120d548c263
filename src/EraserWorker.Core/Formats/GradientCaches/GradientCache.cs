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
/// <para>Opening and validating a folder is in <c>GradientCache.Open.cs</c>; reading rows is here.</para>
/// </remarks>
public sealed partial class GradientCache : IDisposable
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
}
