using EraserWorker.Core.Compute;
using EraserWorker.Core.Influence.Rows;
using EraserWorker.Core.Tests.TestSupport;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Tests.Influence;

/// <summary>The float64 row products against a plain double-precision loop written here, on rows wide enough for
/// several column chunks and a ragged last tile, in every storage dtype; and the residency plan's arithmetic.</summary>
public sealed class RowKernelsTests
{
    [Theory]
    [InlineData(ScalarType.Float32)]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.BFloat16)]
    public void Products_equal_a_float64_reference_and_do_not_depend_on_the_blocking(ScalarType type)
    {
        const int n = 11, p = 41_003; // 9 chunks of 5 120 columns, the last one partial; rows not a multiple of 4
        using var scope = torch.NewDisposeScope();
        using var generator = new torch.Generator(17);
        var rows = torch.randn(n, p, generator: generator).to(type);
        var values = rows.to(ScalarType.Float64).data<double>().ToArray(); // exact: every storage dtype widens exactly
        var random = new Random(3);
        var v = Enumerable.Range(0, p).Select(_ => random.NextDouble() - 0.5).ToArray();
        var w = Enumerable.Range(0, p).Select(_ => random.NextDouble() * 2).ToArray();
        var y = Enumerable.Range(0, n).Select(i => i == 4 ? 0 : random.NextDouble() - 0.5).ToArray();

        var dots = new[] { new double[n], new double[n] };
        RowKernels.Project(rows, 0, [v, w], dots);
        var combined = new[] { new double[p] };
        RowKernels.Combine(rows, 0, [y], combined);
        var rowSquares = new double[n];
        var columnSquares = new double[p];
        RowKernels.Squares(rows, 0, rowSquares, columnSquares);

        for (int i = 0; i < n; i++)
        {
            double dv = 0, dw = 0, sq = 0, scale = 0;
            for (int j = 0; j < p; j++)
            {
                double c = values[(long)i * p + j];
                dv += c * v[j];
                dw += c * w[j];
                sq += c * c;
                scale += Math.Abs(c * v[j]) + Math.Abs(c * w[j]);
            }
            Assert.True(Math.Abs(dots[0][i] - dv) <= 1e-13 * scale, $"row {i}: {dots[0][i]} vs {dv}");
            Assert.True(Math.Abs(dots[1][i] - dw) <= 1e-13 * scale);
            Assert.True(Math.Abs(rowSquares[i] - sq) <= 1e-13 * sq);
        }
        for (int j = 0; j < p; j += 97)
        {
            double sum = 0, sq = 0;
            for (int i = 0; i < n; i++)
            {
                double c = values[(long)i * p + j];
                sum += y[i] * c;
                sq += c * c;
            }
            Assert.True(Math.Abs(combined[0][j] - sum) <= 1e-14 * (1 + Math.Abs(sum)), $"column {j}: {combined[0][j]} vs {sum}");
            Assert.True(Math.Abs(columnSquares[j] - sq) <= 1e-14 * (1 + sq));
        }

        // The same products block by block (blocks of 3 rows, as a streamed pass would hand them) agree bit for bit.
        var blocked = new[] { new double[n], new double[n] };
        var blockedCombined = new[] { new double[p] };
        for (int first = 0; first < n; first += 3)
        {
            using var block = rows.narrow(0, first, Math.Min(3, n - first));
            RowKernels.Project(block, first, [v, w], blocked);
            RowKernels.Combine(block, first, [y], blockedCombined);
        }
        Assert.Equal(dots[0], blocked[0]);
        Assert.Equal(dots[1], blocked[1]);
        Assert.Equal(combined[0], blockedCombined[0]);
    }

    [Fact]
    public void Plan_streams_what_does_not_fit_and_keeps_its_buffers_within_the_budget()
    {
        var options = new ComputeOptions { MemoryBudgetBytes = 4L << 30 };
        // The shape: LLaMA-7B q,v r = 8, n = 3000, F16 (25 GB of curvature rows).
        var plan = RowPlan.Choose(3000, 4_194_304, "F16", 2, options, deviceIsCpu: true);
        Assert.Equal(RowResidency.Streamed, plan.Residency);
        Assert.Contains("exceed the 4.00 GiB budget", plan.Reason);
        Assert.True(plan.GramFits);
        Assert.True(plan.PlannedBytes <= options.MemoryBudgetBytes);
        Assert.Equal(3000L * 3000 * 8, plan.GramBytes);

        // The default benchmark's shape fits: held in F16, half of float32's 2 GB.
        var resident = RowPlan.Choose(2000, 250_000, "F16", 2, options, deviceIsCpu: true);
        Assert.Equal(RowResidency.Resident, resident.Residency);
        Assert.Equal("F16", resident.HoldDType);
        Assert.Equal(2000L * 250_000 * 2, resident.RowBytes);
        Assert.Contains("fit the 4.00 GiB budget", resident.Reason);

        // Asked for, against the budget: said so; a Gram that cannot fit sends auto to cg.
        var forced = RowPlan.Choose(2000, 250_000, "F16", 2, new ComputeOptions { Residency = RowResidency.Streamed }, true);
        Assert.Equal(RowResidency.Streamed, forced.Residency);
        Assert.Contains("streamed as configured", forced.Reason);
        var huge = RowPlan.Choose(40_000, 4_194_304, "BF16", 2, options, true);
        Assert.False(huge.GramFits);
        Assert.Contains("auto solves with cg", huge.Reason);
        // A GPU in Float64 precision holds float64 rows.
        var gpu = RowPlan.Choose(100, 1000, "F16", 2, new ComputeOptions { Precision = ComputePrecision.Float64 }, deviceIsCpu: false);
        Assert.Equal("F64", gpu.HoldDType);
        Assert.Equal(100L * 1000 * 8, gpu.RowBytes);
    }
}
