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
    /// dtype they are held in), the Gram and one float64 column fit <see cref="ComputeOptions.MemoryBudgetBytes"/>
    /// (what is left sizes the Gram panels); otherwise streamed, with blocks and panels sized to what the budget
    /// leaves beside the Gram.
    /// </summary>
    public static RowPlan Choose(long n, long p, string storageDType, int storageElementSize, ComputeOptions options, bool deviceIsCpu)
    {
        long budget = options.MemoryBudgetBytes;
        // Held in the storage dtype (F16/BF16 halve float32's memory; the products widen exactly and sum in float64).
        // A GPU in Float64 precision holds float64, since its products run in the held dtype's arithmetic.
        bool wide = !deviceIsCpu && options.Precision == ComputePrecision.Float64;
        string hold = wide ? "F64" : storageDType;
        long rowBytes = n * p * (wide ? 8 : storageElementSize);
        long gram = n * n * 8;
        long column = 8 * Math.Max(1, n); // one column of the rows in float64: the smallest Gram panel

        long residentLeft = budget - rowBytes - gram;
        RowResidency residency = options.Residency;
        string why;
        if (residency == RowResidency.Auto)
        {
            residency = residentLeft >= column ? RowResidency.Resident : RowResidency.Streamed;
            why = residency == RowResidency.Resident
                ? $"rows {Size(rowBytes)} ({hold}) + Gram {Size(gram)} fit the {Size(budget)} budget"
                : $"rows {Size(rowBytes)} ({hold}) + Gram {Size(gram)} exceed the {Size(budget)} budget";
        }
        else
        {
            why = $"{residency.ToString().ToLowerInvariant()} as configured (rows {Size(rowBytes)} ({hold}), Gram {Size(gram)}, budget {Size(budget)})";
        }

        long rowSize = p * storageElementSize;
        long panelBytes, buffers;
        int panelColumns, readColumns, blockRows;
        if (residency == RowResidency.Resident)
        {
            panelBytes = Math.Clamp(residentLeft, column, MaxPanelBytes);
            panelColumns = (int)Math.Clamp(panelBytes / column, 1, p);
            readColumns = panelColumns;
            blockRows = (int)Math.Clamp((64L << 20) / Math.Max(1, rowBytes / Math.Max(1, n)), 1, Math.Max(1, n));
            buffers = panelBytes;
        }
        else
        {
            // Passes and Gram builds never overlap: each may use what the Gram leaves of the budget. Passes hold two
            // blocks (one being read while the other is used); a Gram build holds one float64 panel and two raw panels
            // up to four times as wide, so that each row segment read is long.
            long left = Math.Max(0, budget - gram);
            panelBytes = Math.Clamp(left / 4, column, MaxPanelBytes);
            panelColumns = (int)Math.Clamp(panelBytes / column, 1, p);
            readColumns = (int)Math.Clamp(Math.Min(4L * panelColumns, left / 2 / (2 * Math.Max(1, n) * storageElementSize)), 1, p);
            blockRows = (int)Math.Clamp(left / (2 * Math.Max(1, rowSize)), 1,
                Math.Max(1, Math.Min(Math.Min(options.RowsPerChunk, n), MaxBlockBytes / Math.Max(1, rowSize))));
            buffers = Math.Max(2L * blockRows * rowSize, panelColumns * column + 2L * n * readColumns * storageElementSize);
            hold = storageDType;
            why += $": streaming {blockRows}-row blocks ({Size(2L * blockRows * rowSize)} double-buffered) from the cache files";
        }
        long total = (residency == RowResidency.Resident ? rowBytes : 0) + gram + buffers;
        bool gramFits = total <= budget;
        if (!gramFits)
            why += $"; the Gram does not fit beside them ({Size(total)} > {Size(budget)}): auto solves with cg";
        return new RowPlan(residency, hold, rowBytes, gram, buffers, blockRows, panelColumns, readColumns, budget, gramFits, why);
    }

    internal static string Size(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):F2} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):F1} MiB",
        >= 1L << 10 => $"{bytes / (double)(1L << 10):F1} KiB",
        _ => $"{bytes} B",
    };
}
