using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using EraserWorker.Core.Formats.Safetensors;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Rows;

/// <summary>
/// The CPU products over one block of rows held in their storage dtype (F32, F16 or BF16), with every product and
/// sum in float64: dot products of each row with a few vectors, and linear combinations of the rows.
/// </summary>
/// <remarks>
/// <para>Columns are cut into fixed chunks (a function of P only) that run in parallel; within a chunk, rows go four
/// at a time through tiles of <see cref="Tile"/> columns, widened to float on the way (F16/BF16 → float is exact),
/// so a tile of the vectors and of the accumulators stays in L1 while the rows stream through once. Each chunk owns
/// its columns of the accumulators, and dot products are summed chunk by chunk in column order: the results are the
/// same bit for bit whatever the block boundaries or the number of threads — resident and streamed rows give the
/// same x.</para>
/// <para>Upcasting whole blocks to float64 tensors instead costs several times the memory traffic (measured: 2.4 s
/// against ~0.4 s for 2000 × 250 000 on 2 cores).</para>
/// </remarks>
internal static class RowKernels
{
    /// <summary>Columns widened at a time (4 rows × 1024 floats = 16 KB of scratch).</summary>
    public const int Tile = 1024;

    /// <summary>Whether <paramref name="rows"/> can be read by these kernels: contiguous CPU rows in a storage dtype.</summary>
    public static bool Supports(Tensor rows) =>
        rows.device_type == DeviceType.CPU && rows.is_contiguous() && StorageName(rows.dtype) is not null;

    /// <summary>The safetensors name of a storage scalar type, or null.</summary>
    public static string? StorageName(ScalarType type) => type switch
    {
        ScalarType.Float32 => DTypeConversion.F32,
        ScalarType.Float16 => DTypeConversion.F16,
        ScalarType.BFloat16 => DTypeConversion.BF16,
        _ => null,
    };

    /// <summary>Columns per parallel chunk: about P/8, a multiple of <see cref="Tile"/>, at most 16 384.</summary>
    public static int ChunkColumns(long p) => (int)Math.Clamp((p / 8 + Tile - 1) / Tile * Tile, Tile, 16384);

    /// <summary>dots[k][first + i] = rowᵢ · vectors[k] for the rows of <paramref name="block"/> (rows first, first + 1, …).</summary>
    public static void Project(Tensor block, int first, IReadOnlyList<double[]> vectors, IReadOnlyList<double[]> dots)
    {
        var view = BlockView.Of(block);
        int chunkColumns = ChunkColumns(view.Parameters), chunks = view.Chunks(chunkColumns);
        int k = vectors.Count;
        // partial[(i * chunks + c) * k + v]: row i, chunk c, vector v — summed over c in order below.
        var partial = new double[(long)view.Rows * chunks * k];
        Parallel.For(0, chunks, c =>
        {
            long c0 = (long)c * chunkColumns;
            int width = (int)Math.Min(chunkColumns, view.Parameters - c0);
            var scratch = new float[4 * Tile];
            var sums = new double[4 * k];
            for (int i = 0; i < view.Rows; i += 4)
            {
                int group = Math.Min(4, view.Rows - i);
                Array.Clear(sums);
                for (int t = 0; t < width; t += Tile)
                {
                    int w = Math.Min(Tile, width - t);
                    var tiles = view.Tiles(i, group, c0 + t, w, scratch);
                    for (int v = 0; v < k; v++)
                    {
                        var x = vectors[v].AsSpan((int)(c0 + t), w);
                        if (group == 4)
                        {
                            var (d0, d1, d2, d3) = Dot4(tiles.Row(0), tiles.Row(1), tiles.Row(2), tiles.Row(3), x);
                            sums[v] += d0;
                            sums[k + v] += d1;
                            sums[2 * k + v] += d2;
                            sums[3 * k + v] += d3;
                        }
                        else
                        {
                            for (int r = 0; r < group; r++)
                                sums[r * k + v] += Dot(tiles.Row(r), x);
                        }
                    }
                }
                for (int r = 0; r < group; r++)
                    for (int v = 0; v < k; v++)
                        partial[((long)(i + r) * chunks + c) * k + v] = sums[r * k + v];
            }
        });
        for (int i = 0; i < view.Rows; i++)
            for (int v = 0; v < k; v++)
            {
                double total = 0;
                for (int c = 0; c < chunks; c++)
                    total += partial[((long)i * chunks + c) * k + v];
                dots[v][first + i] = total;
            }
    }

    /// <summary>accumulators[k] += Σᵢ coefficients[k][first + i] · rowᵢ over the rows of <paramref name="block"/>,
    /// row by row in order.</summary>
    public static void Combine(Tensor block, int first, IReadOnlyList<double[]> coefficients, IReadOnlyList<double[]> accumulators)
    {
        var view = BlockView.Of(block);
        int chunkColumns = ChunkColumns(view.Parameters), chunks = view.Chunks(chunkColumns);
        int k = coefficients.Count;
        Parallel.For(0, chunks, c =>
        {
            long c0 = (long)c * chunkColumns;
            int width = (int)Math.Min(chunkColumns, view.Parameters - c0);
            var scratch = new float[4 * Tile];
            for (int i = 0; i < view.Rows; i += 4)
            {
                int group = Math.Min(4, view.Rows - i);
                bool any = false;
                for (int v = 0; v < k && !any; v++)
                    for (int r = 0; r < group; r++)
                        any |= coefficients[v][first + i + r] != 0;
                if (!any)
                    continue; // adding zeros changes nothing
                for (int t = 0; t < width; t += Tile)
                {
                    int w = Math.Min(Tile, width - t);
                    var tiles = view.Tiles(i, group, c0 + t, w, scratch);
                    for (int v = 0; v < k; v++)
                    {
                        var y = coefficients[v];
                        var acc = accumulators[v].AsSpan((int)(c0 + t), w);
                        if (group == 4)
                            Axpy4(acc, y[first + i], tiles.Row(0), y[first + i + 1], tiles.Row(1),
                                y[first + i + 2], tiles.Row(2), y[first + i + 3], tiles.Row(3));
                        else
                            for (int r = 0; r < group; r++)
                                Axpy(acc, y[first + i + r], tiles.Row(r));
                    }
                }
            }
        });
    }

    /// <summary>squares[first + i] = ‖rowᵢ‖² and columnSquares[j] += Σᵢ rowᵢⱼ² over the block, in float64.</summary>
    public static void Squares(Tensor block, int first, double[] rowSquares, double[] columnSquares)
    {
        var view = BlockView.Of(block);
        int chunkColumns = ChunkColumns(view.Parameters), chunks = view.Chunks(chunkColumns);
        var partial = new double[(long)view.Rows * chunks];
        Parallel.For(0, chunks, c =>
        {
            long c0 = (long)c * chunkColumns;
            int width = (int)Math.Min(chunkColumns, view.Parameters - c0);
            var scratch = new float[4 * Tile];
            for (int i = 0; i < view.Rows; i += 4)
            {
                int group = Math.Min(4, view.Rows - i);
                for (int t = 0; t < width; t += Tile)
                {
                    int w = Math.Min(Tile, width - t);
                    var tiles = view.Tiles(i, group, c0 + t, w, scratch);
                    var acc = columnSquares.AsSpan((int)(c0 + t), w);
                    for (int r = 0; r < group; r++)
                    {
                        var row = tiles.Row(r);
                        partial[(long)(i + r) * chunks + c] += SquareSum(row);
                        AddSquares(acc, row);
                    }
                }
            }
        });
        for (int i = 0; i < view.Rows; i++)
        {
            double total = 0;
            for (int c = 0; c < chunks; c++)
                total += partial[(long)i * chunks + c];
            rowSquares[first + i] = total;
        }
    }

    /// <summary>A block's memory (native, never moved by the GC) seen as rows of storage elements.</summary>
    private readonly unsafe struct BlockView
    {
        private readonly byte* _data;
        private readonly string _dtype;

        private BlockView(byte* data, int rows, long parameters, string dtype)
        {
            _data = data;
            Rows = rows;
            Parameters = parameters;
            _dtype = dtype;
        }

        public int Rows { get; }

        public long Parameters { get; }

        public static BlockView Of(Tensor block)
        {
            if (!Supports(block) || block.dim() != 2)
                throw new ArgumentException("The kernels read contiguous 2-D CPU rows stored as F32, F16 or BF16.", nameof(block));
            if (block.shape[1] > Array.MaxLength)
                throw new NotSupportedException($"Rows of {block.shape[1]} elements do not fit in an array.");
            // Blocks stay below 1 GiB, so their bytes fit a span; the memory is native and never moves.
            byte* data = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(block.bytes));
            return new BlockView(data, (int)block.shape[0], block.shape[1], StorageName(block.dtype)!);
        }

        public int Chunks(int chunkColumns) => (int)((Parameters + chunkColumns - 1) / chunkColumns);

        /// <summary>Columns [column, column + width) of rows [row, row + count) as floats: in place for F32, widened
        /// into <paramref name="scratch"/> otherwise.</summary>
        public TileSet Tiles(int row, int count, long column, int width, float[] scratch)
        {
            if (_dtype == DTypeConversion.F32)
                return new TileSet((float*)_data + row * Parameters + column, Parameters, null, width);
            for (int r = 0; r < count; r++)
            {
                var src = new ReadOnlySpan<ushort>((ushort*)_data + (row + r) * Parameters + column, width);
                var dst = scratch.AsSpan(r * Tile, width);
                if (_dtype == DTypeConversion.F16)
                    DTypeConversion.HalfToSingle(src, dst);
                else
                    DTypeConversion.BFloat16ToSingle(src, dst);
            }
            return new TileSet(null, 0, scratch, width);
        }
    }

    /// <summary>Up to four row tiles of one width: in place (F32 rows, <paramref name="stride"/> floats apart) or in
    /// the scratch buffer.</summary>
    private readonly unsafe struct TileSet(float* first, long stride, float[]? scratch, int width)
    {
        public ReadOnlySpan<float> Row(int r) => scratch is null
            ? new ReadOnlySpan<float>(first + r * stride, width)
            : scratch.AsSpan(r * Tile, width);
    }

    private static double SquareSum(ReadOnlySpan<float> row)
    {
        int width = Vector<float>.Count, j = 0;
        var sum = Vector<double>.Zero;
        for (; j + width <= row.Length; j += width)
        {
            Vector.Widen(new Vector<float>(row.Slice(j, width)), out var low, out var high);
            sum += low * low + high * high;
        }
        double total = Vector.Sum(sum);
        for (; j < row.Length; j++)
            total += (double)row[j] * row[j];
        return total;
    }

    private static void AddSquares(Span<double> acc, ReadOnlySpan<float> row)
    {
        int width = Vector<float>.Count, j = 0;
        for (; j + width <= row.Length; j += width)
        {
            Vector.Widen(new Vector<float>(row.Slice(j, width)), out var low, out var high);
            var a0 = acc.Slice(j, width / 2);
            var a1 = acc.Slice(j + width / 2, width / 2);
            (new Vector<double>(a0) + low * low).CopyTo(a0);
            (new Vector<double>(a1) + high * high).CopyTo(a1);
        }
        for (; j < row.Length; j++)
            acc[j] += (double)row[j] * row[j];
    }

    private static (double, double, double, double) Dot4(ReadOnlySpan<float> r0, ReadOnlySpan<float> r1, ReadOnlySpan<float> r2,
        ReadOnlySpan<float> r3, ReadOnlySpan<double> v)
    {
        int width = Vector<float>.Count, half = width / 2, j = 0;
        Vector<double> s0 = default, s1 = default, s2 = default, s3 = default;
        for (; j + width <= v.Length; j += width)
        {
            var vLow = new Vector<double>(v.Slice(j, half));
            var vHigh = new Vector<double>(v.Slice(j + half, half));
            Vector.Widen(new Vector<float>(r0.Slice(j, width)), out var a, out var b);
            s0 += a * vLow + b * vHigh;
            Vector.Widen(new Vector<float>(r1.Slice(j, width)), out a, out b);
            s1 += a * vLow + b * vHigh;
            Vector.Widen(new Vector<float>(r2.Slice(j, width)), out a, out b);
            s2 += a * vLow + b * vHigh;
            Vector.Widen(new Vector<float>(r3.Slice(j, width)), out a, out b);
            s3 += a * vLow + b * vHigh;
        }
        double t0 = Vector.Sum(s0), t1 = Vector.Sum(s1), t2 = Vector.Sum(s2), t3 = Vector.Sum(s3);
        for (; j < v.Length; j++)
        {
            t0 += r0[j] * v[j];
            t1 += r1[j] * v[j];
            t2 += r2[j] * v[j];
            t3 += r3[j] * v[j];
        }
        return (t0, t1, t2, t3);
    }

    private static void Axpy4(Span<double> acc, double k0, ReadOnlySpan<float> r0, double k1, ReadOnlySpan<float> r1,
        double k2, ReadOnlySpan<float> r2, double k3, ReadOnlySpan<float> r3)
    {
        int width = Vector<float>.Count, half = width / 2, j = 0;
        Vector<double> c0 = new(k0), c1 = new(k1), c2 = new(k2), c3 = new(k3);
        for (; j + width <= acc.Length; j += width)
        {
            var low = acc.Slice(j, half);
            var high = acc.Slice(j + half, half);
            var sumLow = new Vector<double>(low);
            var sumHigh = new Vector<double>(high);
            Vector.Widen(new Vector<float>(r0.Slice(j, width)), out var a, out var b);
            sumLow += c0 * a;
            sumHigh += c0 * b;
            Vector.Widen(new Vector<float>(r1.Slice(j, width)), out a, out b);
            sumLow += c1 * a;
            sumHigh += c1 * b;
            Vector.Widen(new Vector<float>(r2.Slice(j, width)), out a, out b);
            sumLow += c2 * a;
            sumHigh += c2 * b;
            Vector.Widen(new Vector<float>(r3.Slice(j, width)), out a, out b);
            sumLow += c3 * a;
            sumHigh += c3 * b;
            sumLow.CopyTo(low);
            sumHigh.CopyTo(high);
        }
        // Row by row, as Axpy does: the sums do not depend on how rows were grouped.
        for (; j < acc.Length; j++)
            acc[j] = acc[j] + k0 * r0[j] + k1 * r1[j] + k2 * r2[j] + k3 * r3[j];
    }

    private static double Dot(ReadOnlySpan<float> row, ReadOnlySpan<double> v)
    {
        int width = Vector<float>.Count, j = 0;
        var sum = Vector<double>.Zero;
        for (; j + width <= row.Length; j += width)
        {
            Vector.Widen(new Vector<float>(row.Slice(j, width)), out var low, out var high);
            sum += low * new Vector<double>(v.Slice(j, width / 2)) + high * new Vector<double>(v.Slice(j + width / 2, width / 2));
        }
        double total = Vector.Sum(sum);
        for (; j < row.Length; j++)
            total += row[j] * v[j];
        return total;
    }

    private static void Axpy(Span<double> acc, double scale, ReadOnlySpan<float> row)
    {
        int width = Vector<float>.Count, j = 0;
        var s = new Vector<double>(scale);
        for (; j + width <= row.Length; j += width)
        {
            Vector.Widen(new Vector<float>(row.Slice(j, width)), out var low, out var high);
            var a0 = acc.Slice(j, width / 2);
            var a1 = acc.Slice(j + width / 2, width / 2);
            (new Vector<double>(a0) + s * low).CopyTo(a0);
            (new Vector<double>(a1) + s * high).CopyTo(a1);
        }
        for (; j < row.Length; j++)
            acc[j] += scale * row[j];
    }
}
