using System.Security.Cryptography;
using System.Text;

namespace EraserWorker.Core.Influence.Rows;

/// <summary>
/// The identity of a row matrix by content: SHA-256 over a header (format, dtype, n, P) followed by the SHA-256 of
/// each row's stored bytes in row order. Per-row digests let any read order compute it — row blocks, parallel
/// loading chunks, or column panels (each row's segments appended in column order).
/// </summary>
internal sealed class RowsDigest
{
    private const int Size = 32;
    private readonly byte[] _rows;
    private readonly IncrementalHash?[] _partial;
    private readonly string _header;

    public RowsDigest(int rows, long parameters, string dtype)
    {
        _rows = new byte[(long)rows * Size];
        _partial = new IncrementalHash?[rows];
        _header = $"eraser.rows/v1\n{dtype}\n{rows}\n{parameters}\n";
        Count = rows;
    }

    public int Count { get; }

    /// <summary>Records a whole row (thread-safe for distinct rows).</summary>
    public void Row(int row, ReadOnlySpan<byte> bytes) => SHA256.HashData(bytes, _rows.AsSpan(row * Size, Size));

    /// <summary>Appends the next segment of a row read in column order (thread-safe for distinct rows).</summary>
    public void Segment(int row, ReadOnlySpan<byte> bytes) =>
        (_partial[row] ??= IncrementalHash.CreateHash(HashAlgorithmName.SHA256)).AppendData(bytes);

    /// <summary>Closes the rows fed by <see cref="Segment"/>.</summary>
    public void FinishSegments()
    {
        for (int i = 0; i < _partial.Length; i++)
        {
            if (_partial[i] is not { } hash)
                continue;
            hash.GetHashAndReset(_rows.AsSpan(i * Size, Size));
            hash.Dispose();
            _partial[i] = null;
        }
    }

    /// <summary>The digest as 64 lowercase hex digits.</summary>
    public string Finish()
    {
        using var total = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        total.AppendData(Encoding.UTF8.GetBytes(_header));
        total.AppendData(_rows);
        return Convert.ToHexStringLower(total.GetHashAndReset());
    }
}
