using EraserWorker.Core.Compute;

namespace EraserWorker.Core.Influence.Rows;

/// <summary>
/// How an engine holds its curvature rows and why: the outcome of <see cref="RowResidency.Auto"/> (or the residency
/// asked for), with the memory it accounts for. Every figure is bytes on the compute device.
/// </summary>
/// <param name="Residency">Resident or Streamed (never Auto).</param>
/// <param name="HoldDType">The dtype rows are held or read in: the cache's storage dtype (F32, F16, BF16) or F64.</param>
/// <param name="RowBytes">All n rows in <paramref name="HoldDType"/> (held only when resident).</param>
/// <param name="GramBytes">The float64 Gram n × n (held once built).</param>
/// <param name="BufferBytes">Read buffers: two row blocks and the Gram panels (streamed), or the Gram panels (resident).</param>
/// <param name="BlockRows">Rows per block of a pass.</param>
/// <param name="PanelColumns">Columns of the rows converted to float64 at a time while building the Gram.</param>
/// <param name="ReadPanelColumns">Columns per panel read from the cache files while building a streamed Gram.</param>
/// <param name="GramFits">Whether the Gram fits the budget beside the rows and buffers (the <c>auto</c> solver's direct path).</param>
/// <param name="Reason">One sentence: what was chosen and why.</param>
public sealed record RowPlan(
    RowResidency Residency, string HoldDType, long RowBytes, long GramBytes, long BufferBytes, int BlockRows,
    int PanelColumns, int ReadPanelColumns, long BudgetBytes, bool GramFits, string Reason)
{
    /// <summary>Peak bytes the plan accounts for: rows held (resident), Gram and buffers.</summary>
    public long PlannedBytes => (Residency == RowResidency.Resident ? RowBytes : 0) + GramBytes + BufferBytes;

    /// <summary>Most bytes of one Gram panel converted to float64 at a time.</summary>
    internal const long MaxPanelBytes = 128L << 20;

    /// <summary>Most bytes of one streamed block (spans over a block must stay within int range).</summary>
    internal const long MaxBlockBytes = 1L << 30;

    /// <summary>
    /// Chooses for n rows of P elements stored as <paramref name="storageDType"/>. Resident when the rows (in the
    /// dtype they are held in), the Gram and one float64 Gram panel fit <see cref="ComputeOptions.MemoryBudgetBytes"/>;
    /// otherwise streamed, with blocks and panels sized to what the budget leaves beside the Gram.
    /// </summary>
    public static RowPlan Choose(long n, long p, string storageDType, int storageElementSize, ComputeOptions options, bool deviceIsCpu)
    {
        long budget = options.MemoryBudgetBytes;
        // Held in the storage dtype (F16/BF16 halve float32's memory; the products widen exactly and sum in float64).
        // A GPU in Float64 precision holds float64, since its products run in the held dtype's arithmetic.
        bool wide = !deviceIsCpu && options.Precision == ComputePrecision.Float64;
        string hold = wide ? "F64" : storageDType;
        long holdSize = wide ? 8 : storageElementSize;
        long rowBytes = n * p * holdSize;
        long gram = n * n * 8;
        long panelBytes = Math.Max(8 * n, Math.Min(MaxPanelBytes, Math.Max(0, budget - gram) / 4));
        int panelColumns = (int)Math.Clamp(panelBytes / (8 * Math.Max(1, n)), 1, p);
        int readPanelColumns = (int)Math.Min(p, 4L * panelColumns);

        RowResidency residency = options.Residency;
        string why;
        long residentPeak = rowBytes + gram + panelBytes;
        if (residency == RowResidency.Auto)
        {
            residency = residentPeak <= budget ? RowResidency.Resident : RowResidency.Streamed;
            why = residency == RowResidency.Resident
                ? $"rows {Size(rowBytes)} ({hold}) + Gram {Size(gram)} + panel {Size(panelBytes)} fit the {Size(budget)} budget"
                : $"rows {Size(rowBytes)} ({hold}) + Gram {Size(gram)} exceed the {Size(budget)} budget";
        }
        else
        {
            why = $"{residency.ToString().ToLowerInvariant()} as configured (rows {Size(rowBytes)} ({hold}), Gram {Size(gram)}, budget {Size(budget)})";
        }

        long rowSize = p * storageElementSize;
        int blockRows = 0;
        long buffers = panelBytes;
        if (residency == RowResidency.Streamed)
        {
            // Two blocks (one being read while the other is used) in what the Gram and a panel leave of the budget.
            long left = Math.Max(0, budget - gram - panelBytes);
            blockRows = (int)Math.Clamp(left / (2 * Math.Max(1, rowSize)), 1, Math.Min(options.RowsPerChunk, Math.Max(1, MaxBlockBytes / Math.Max(1, rowSize))));
            blockRows = (int)Math.Min(blockRows, Math.Max(1, n));
            // A streamed Gram build holds two raw panels (one being read) beside the float64 one; they are four
            // float64 panels wide, so that each row segment read is long.
            long rawPanels = 2 * n * readPanelColumns * storageElementSize;
            buffers = Math.Max(2L * blockRows * rowSize, panelBytes + rawPanels);
            hold = storageDType;
            why += $": streaming {blockRows}-row blocks ({Size(2L * blockRows * rowSize)} double-buffered) from the cache files";
        }
        else
        {
            blockRows = (int)Math.Clamp((64L << 20) / Math.Max(1, p * holdSize), 1, Math.Max(1, n));
        }
        long total = (residency == RowResidency.Resident ? rowBytes : 0) + gram + buffers;
        bool gramFits = total <= budget;
        if (!gramFits)
            why += $"; the Gram does not fit beside them ({Size(total)} > {Size(budget)}): auto solves with cg";
        return new RowPlan(residency, hold, rowBytes, gram, buffers, blockRows, panelColumns, readPanelColumns, budget, gramFits, why);
    }

    internal static string Size(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F1} MiB",
        >= 1L << 10 => $"{bytes / (double)(1L << 10):F1} KiB",
        _ => $"{bytes} B",
    };
}
