using EraserWorker.Core.Compute;
using TorchSharp;
using static TorchSharp.torch;

namespace EraserWorker.Core.Influence.Rows;

/// <summary>
/// C Cᵀ (n × n) in float64, built blockwise from column panels of the rows: each panel is widened to float64
/// (exact for F32/F16/BF16) a few columns at a time and multiplied block by block (only the upper block triangle,
/// one BLAS call per block pair), so every product and sum is float64. Float64 throughout is what lets the Woodbury
/// solve report its true residual without another pass over the rows (see DirectSolver). One read of the rows.
/// </summary>
internal static class GramBuilder
{
    /// <summary>Rows per block of the triangle: n = 3000 needs 21 of 36 block products instead of all 36.</summary>
    private const long Block = 512;

    /// <returns>The Gram on the source's device, outside any dispose scope (the caller owns it).</returns>
    public static Tensor Build(RowSource source, IProgress<EngineProgress>? progress, CancellationToken cancellation)
    {
        long n = source.Count, p = source.Parameters;
        int sub = source.Plan.PanelColumns;
        var gram = torch.zeros(n, n, dtype: ScalarType.Float64, device: source.Device).DetachFromDisposeScope();
        try
        {
            var blocks = new List<(long Start, long Size)>();
            for (long s = 0; s < n; s += Block)
                blocks.Add((s, Math.Min(Block, n - s)));
            progress?.Report(new EngineProgress("gram", 0, p));
            source.ForEachPanel((c0, panel) =>
            {
                long width = panel.shape[1];
                for (long s = 0; s < width; s += sub)
                {
                    cancellation.ThrowIfCancellationRequested();
                    long w = Math.Min(sub, width - s);
                    using var lease = source.Memory.Hold(n * w * 8);
                    using var scope = torch.NewDisposeScope();
                    var cols = panel.narrow(1, s, w).to(ScalarType.Float64).contiguous();
                    for (int i = 0; i < blocks.Count; i++)
                    {
                        var left = cols.narrow(0, blocks[i].Start, blocks[i].Size);
                        for (int j = i; j < blocks.Count; j++)
                        {
                            var right = cols.narrow(0, blocks[j].Start, blocks[j].Size);
                            gram.narrow(0, blocks[i].Start, blocks[i].Size).narrow(1, blocks[j].Start, blocks[j].Size)
                                .AddInPlace(left.matmul(right.t()));
                        }
                    }
                }
                progress?.Report(new EngineProgress("gram", Math.Min(p, c0 + width), p));
            }, cancellation);
            using (var scope = torch.NewDisposeScope())
            {
                // Mirror the upper block triangle into the lower one.
                for (int i = 0; i < blocks.Count; i++)
                    for (int j = i + 1; j < blocks.Count; j++)
                        gram.narrow(0, blocks[j].Start, blocks[j].Size).narrow(1, blocks[i].Start, blocks[i].Size)
                            .copy_(gram.narrow(0, blocks[i].Start, blocks[i].Size).narrow(1, blocks[j].Start, blocks[j].Size).t());
            }
            return gram;
        }
        catch
        {
            gram.Dispose();
            throw;
        }
    }
}
