using System.Numerics;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence;

/// <summary>
/// Σᵢ keepᵢ cᵢ(cᵢᵀv) over float32 rows with every product and sum in float64, in one pass over the rows: each
/// row is read from memory once for the dot product and reused from cache for the update. Upcasting whole blocks
/// to float64 tensors instead costs several times the memory traffic (measured: 2.4 s against ~0.4 s for
/// 2000 × 250 000 on 2 cores). CPU float32 rows only; other layouts use tensor arithmetic.
/// </summary>
internal static class PreciseProducts
{
    public static bool Supports(Tensor rows) =>
        rows.device_type == DeviceType.CPU && rows.dtype == ScalarType.Float32 && rows.is_contiguous();

    public static double[] DataTerm(Tensor rows, double[] keep, double[] v)
    {
        int n = (int)rows.shape[0], p = (int)rows.shape[1];
        int workers = Math.Max(1, Math.Min(Environment.ProcessorCount, n));
        var partial = new double[workers][];
        Parallel.For(0, workers, w =>
        {
            var acc = new double[p];
            int first = (int)((long)n * w / workers), last = (int)((long)n * (w + 1) / workers);
            // Rows are viewed in blocks below 1 GiB so that spans stay within int range.
            int blockRows = Math.Max(1, (int)((1L << 30) / 4 / Math.Max(1, p)));
            for (int start = first; start < last; start += blockRows)
            {
                int count = Math.Min(blockRows, last - start);
                using var block = rows.narrow(0, start, count);
                var values = MemoryMarshal.Cast<byte, float>(block.bytes);
                // Rows go four at a time: v and the accumulator are swept once per group, not once per row.
                int i = 0;
                for (; i + 4 <= count; i += 4)
                {
                    var r0 = values.Slice(i * p, p);
                    var r1 = values.Slice((i + 1) * p, p);
                    var r2 = values.Slice((i + 2) * p, p);
                    var r3 = values.Slice((i + 3) * p, p);
                    var (d0, d1, d2, d3) = Dot4(r0, r1, r2, r3, v);
                    Axpy4(acc, keep[start + i] * d0, r0, keep[start + i + 1] * d1, r1,
                        keep[start + i + 2] * d2, r2, keep[start + i + 3] * d3, r3);
                }
                for (; i < count; i++)
                {
                    double k = keep[start + i];
                    if (k == 0)
                        continue;
                    var row = values.Slice(i * p, p);
                    Axpy(acc, k * Dot(row, v), row);
                }
            }
            partial[w] = acc;
        });
        var result = partial[0];
        for (int w = 1; w < workers; w++)
        {
            var other = partial[w];
            for (int j = 0; j < p; j++)
                result[j] += other[j];
        }
        return result;
    }

    /// <summary>u = C v with float64 products and sums (one dot product per row), scaled by <paramref name="keep"/>.</summary>
    public static double[] Project(Tensor rows, double[] keep, double[] v)
    {
        int n = (int)rows.shape[0], p = (int)rows.shape[1];
        var result = new double[n];
        ForEachBlock(rows, (start, count, values) =>
        {
            int i = 0;
            for (; i + 4 <= count; i += 4)
            {
                var (d0, d1, d2, d3) = Dot4(values.Slice(i * p, p), values.Slice((i + 1) * p, p),
                    values.Slice((i + 2) * p, p), values.Slice((i + 3) * p, p), v);
                result[start + i] = keep[start + i] * d0;
                result[start + i + 1] = keep[start + i + 1] * d1;
                result[start + i + 2] = keep[start + i + 2] * d2;
                result[start + i + 3] = keep[start + i + 3] * d3;
            }
            for (; i < count; i++)
                result[start + i] = keep[start + i] * Dot(values.Slice(i * p, p), v);
        });
        return result;
    }

    /// <summary>Cᵀy = Σᵢ yᵢcᵢ with float64 products and sums.</summary>
    public static double[] Combine(Tensor rows, double[] y)
    {
        int p = (int)rows.shape[1];
        var partial = new System.Collections.Concurrent.ConcurrentBag<double[]>();
        ForEachPartition(rows, (first, last) =>
        {
            var acc = new double[p];
            ForEachBlockIn(rows, first, last, (start, count, values) =>
            {
                int i = 0;
                for (; i + 4 <= count; i += 4)
                    Axpy4(acc, y[start + i], values.Slice(i * p, p), y[start + i + 1], values.Slice((i + 1) * p, p),
                        y[start + i + 2], values.Slice((i + 2) * p, p), y[start + i + 3], values.Slice((i + 3) * p, p));
                for (; i < count; i++)
                    if (y[start + i] != 0)
                        Axpy(acc, y[start + i], values.Slice(i * p, p));
            });
            partial.Add(acc);
        });
        return Sum(partial.ToArray(), p);
    }

    private delegate void BlockAction(int start, int count, ReadOnlySpan<float> values);

    /// <summary>Splits the rows among the cores and visits each part in blocks below 1 GiB (spans stay in int range).</summary>
    private static void ForEachBlock(Tensor rows, BlockAction action) =>
        ForEachPartition(rows, (first, last) => ForEachBlockIn(rows, first, last, action));

    private static void ForEachPartition(Tensor rows, Action<int, int> action)
    {
        int n = (int)rows.shape[0];
        int workers = Math.Max(1, Math.Min(Environment.ProcessorCount, n));
        Parallel.For(0, workers, w => action((int)((long)n * w / workers), (int)((long)n * (w + 1) / workers)));
    }

    private static void ForEachBlockIn(Tensor rows, int first, int last, BlockAction action)
    {
        int p = (int)rows.shape[1];
        int blockRows = Math.Max(1, (int)((1L << 30) / 4 / Math.Max(1, p)));
        for (int start = first; start < last; start += blockRows)
        {
            int count = Math.Min(blockRows, last - start);
            using var block = rows.narrow(0, start, count);
            action(start, count, MemoryMarshal.Cast<byte, float>(block.bytes));
        }
    }

    private static double[] Sum(double[][] parts, int p)
    {
        var result = parts[0];
        for (int w = 1; w < parts.Length; w++)
            for (int j = 0; j < p; j++)
                result[j] += parts[w][j];
        return result;
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
        for (; j < acc.Length; j++)
            acc[j] += k0 * r0[j] + k1 * r1[j] + k2 * r2[j] + k3 * r3[j];
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
