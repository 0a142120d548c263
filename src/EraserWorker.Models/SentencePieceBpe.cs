using System.Buffers.Binary;
using System.Text;

namespace EraserWorker.Models;

/// <summary>
/// SentencePiece's own BPE encoding of a <c>tokenizer.model</c> (LLaMA 1/2, Mistral): normalizer.cc with an identity
/// rule (dummy prefix, extra-whitespace removal, whitespace escaping, whitespace as suffix) and bpe_model.cc's
/// merge loop without dropout, then byte fallback for pieces outside the vocabulary — id for id what
/// <c>SentencePieceProcessor.encode</c> returns (without BOS/EOS).
/// </summary>
/// <remarks>
/// <see cref="ModelTokenizer"/> encodes with this rather than with Microsoft.ML.Tokenizers 2.0.1's
/// <c>SentencePieceTokenizer</c>, whose merge queue breaks ties between pairs of equal score at the rightmost pair
/// where SentencePiece takes the leftmost (<c>SymbolPairComparator</c>: higher score first, then smaller left
/// index). The two differ whenever one piece can be formed at overlapping positions — above all runs of spaces with
/// LLaMA's ▁▁, ▁▁▁, ▁▁▁▁ pieces: "    four" can be ▁▁▁▁ ▁f ou r in SentencePiece and ▁▁▁ ▁▁ f ou r in the library.
/// Decoding stays with Microsoft.ML.Tokenizers (see the README, "SentencePiece tokenizer.model").
/// </remarks>
internal sealed class SentencePieceBpe
{
    private const char SpaceSymbol = '\u2581';

    // Piece types of sentencepiece_model.proto (UNKNOWN = 2 and CONTROL = 3 go, with BYTE, to the reserved map).
    private const int Normal = 1, UserDefined = 4, Unused = 5, ByteType = 6;

    private readonly Dictionary<string, (int Id, float Score, bool Unused)> _pieces = new(StringComparer.Ordinal); // bpe_model's pieces_
    private readonly Dictionary<string, int> _reserved = new(StringComparer.Ordinal); // control, unknown and byte pieces
    private readonly Dictionary<string, (int Id, float Score, bool Unused)>.AlternateLookup<ReadOnlySpan<char>> _piecesBySpan;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _reservedBySpan;
    private readonly string[] _userDefined; // longest first: SentencePiece's PrefixMatcher takes the longest match
    private readonly int[] _byteIds = new int[256];

    private SentencePieceBpe(List<(string Piece, float Score, int Type)> pieces, int unkId, bool byteFallback, bool addDummyPrefix,
        bool removeExtraWhitespaces, bool escapeWhitespaces, bool whitespaceAsSuffix)
    {
        UnknownId = unkId;
        ByteFallback = byteFallback;
        AddDummyPrefix = addDummyPrefix;
        RemoveExtraWhitespaces = removeExtraWhitespaces;
        EscapeWhitespaces = escapeWhitespaces;
        WhitespaceAsSuffix = whitespaceAsSuffix;
        Array.Fill(_byteIds, unkId);
        for (int id = 0; id < pieces.Count; id++)
        {
            var (piece, score, type) = pieces[id];
            if (type is Normal or UserDefined or Unused)
                _pieces.TryAdd(piece, (id, score, type == Unused));
            else
                _reserved.TryAdd(piece, id);
            if (type == ByteType && piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
                && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.AllowHexSpecifier, null, out byte b))
                _byteIds[b] = id;
        }
        _userDefined = pieces.Where(p => p.Type == UserDefined && p.Piece.Length > 0).Select(p => p.Piece)
            .OrderByDescending(p => p.Length).ToArray();
        _piecesBySpan = _pieces.GetAlternateLookup<ReadOnlySpan<char>>();
        _reservedBySpan = _reserved.GetAlternateLookup<ReadOnlySpan<char>>();
        VocabularySize = pieces.Count;
    }

    public int VocabularySize { get; }

    public int UnknownId { get; }

    public bool ByteFallback { get; }

    public bool AddDummyPrefix { get; }

    public bool RemoveExtraWhitespaces { get; }

    public bool EscapeWhitespaces { get; }

    public bool WhitespaceAsSuffix { get; }

    /// <summary>Reads a serialized SentencePiece <c>ModelProto</c>; only BPE models with an identity normalizer.</summary>
    public static SentencePieceBpe Parse(ReadOnlySpan<byte> model, string source)
    {
        var pieces = new List<(string, float, int)>();
        int modelType = 1, unkId = 0; // proto2 defaults: UNIGRAM, unk_id 0
        bool byteFallback = false, suffix = false, addDummyPrefix = true, removeExtra = true, escape = true;
        string name = "";
        bool charsMap = false;
        try
        {
            var reader = new ProtoReader(model);
            while (reader.Next(out int field, out int wire))
            {
                switch (field)
                {
                    case 1 when wire == 2:
                        {
                            var p = new ProtoReader(reader.Bytes());
                            string piece = "";
                            float score = 0;
                            int type = Normal;
                            while (p.Next(out int f, out int w))
                            {
                                if (f == 1 && w == 2) piece = Encoding.UTF8.GetString(p.Bytes());
                                else if (f == 2 && w == 5) score = p.Float();
                                else if (f == 3 && w == 0) type = (int)p.Varint();
                                else p.Skip(w);
                            }
                            pieces.Add((piece, score, type));
                            break;
                        }
                    case 2 when wire == 2:
                        {
                            var t = new ProtoReader(reader.Bytes());
                            while (t.Next(out int f, out int w))
                            {
                                if (f == 3 && w == 0) modelType = (int)t.Varint();
                                else if (f == 24 && w == 0) suffix = t.Varint() != 0;
                                else if (f == 35 && w == 0) byteFallback = t.Varint() != 0;
                                else if (f == 40 && w == 0) unkId = (int)t.Varint();
                                else t.Skip(w);
                            }
                            break;
                        }
                    case 3 when wire == 2:
                        {
                            var n = new ProtoReader(reader.Bytes());
                            while (n.Next(out int f, out int w))
                            {
                                if (f == 1 && w == 2) name = Encoding.UTF8.GetString(n.Bytes());
                                else if (f == 2 && w == 2) charsMap = n.Bytes().Length > 0;
                                else if (f == 3 && w == 0) addDummyPrefix = n.Varint() != 0;
                                else if (f == 4 && w == 0) removeExtra = n.Varint() != 0;
                                else if (f == 5 && w == 0) escape = n.Varint() != 0;
                                else n.Skip(w);
                            }
                            break;
                        }
                    default:
                        reader.Skip(wire);
                        break;
                }
            }
        }
        catch (Exception e) when (e is IndexOutOfRangeException or ArgumentOutOfRangeException or OverflowException)
        {
            throw new InvalidDataException($"{source}: not a SentencePiece model (truncated protobuf).", e);
        }
        if (modelType != 2)
            throw new InvalidDataException($"{source}: only SentencePiece BPE models are supported (model_type {modelType}).");
        if (charsMap || (name.Length > 0 && name != "identity"))
            throw new InvalidDataException($"{source}: SentencePiece normalization '{name}' is not supported (only identity).");
        if (pieces.Count == 0 || unkId < 0 || unkId >= pieces.Count)
            throw new InvalidDataException($"{source}: the SentencePiece model has no pieces or no valid unk_id.");
        return new SentencePieceBpe(pieces, unkId, byteFallback, addDummyPrefix, removeExtra, escape, suffix);
    }

    /// <summary>SentencePiece's normalized text: identity rule plus its whitespace handling.</summary>
    public string Normalize(string text)
    {
        int start = 0;
        if (RemoveExtraWhitespaces)
            while (start < text.Length && text[start] == ' ')
                start++;
        if (start == text.Length)
            return "";
        char space = EscapeWhitespaces ? SpaceSymbol : ' ';
        var sb = new StringBuilder(text.Length + 2);
        if (AddDummyPrefix && !WhitespaceAsSuffix)
            sb.Append(space);
        bool previousSpace = RemoveExtraWhitespaces;
        Span<char> utf16 = stackalloc char[2];
        foreach (var rune in text.AsSpan(start).EnumerateRunes()) // lone surrogates become U+FFFD, as in their UTF-8
        {
            if (rune.Value == ' ')
            {
                if (RemoveExtraWhitespaces && previousSpace)
                    continue;
                sb.Append(space);
                previousSpace = true;
            }
            else
            {
                sb.Append(utf16[..rune.EncodeToUtf16(utf16)]);
                previousSpace = false;
            }
        }
        if (RemoveExtraWhitespaces)
            while (sb.Length > 0 && sb[^1] == space)
                sb.Length--;
        if (AddDummyPrefix && WhitespaceAsSuffix)
            sb.Append(space);
        return sb.ToString();
    }

    private struct Symbol
    {
        public int Prev, Next, Start, Length;
        public bool Freeze;
    }

    private sealed class AgendaOrder : IComparer<(float Score, int Left)>
    {
        public static readonly AgendaOrder Instance = new();

        // Higher score first; among equal scores the leftmost pair (SentencePiece's SymbolPairComparator).
        public int Compare((float Score, int Left) a, (float Score, int Left) b)
        {
            int c = b.Score.CompareTo(a.Score);
            return c != 0 ? c : a.Left.CompareTo(b.Left);
        }
    }

    /// <summary>Token ids of a text (no BOS/EOS), as SentencePiece's <c>encode</c>.</summary>
    public int[] Encode(string text)
    {
        string normalized = Normalize(text);
        if (normalized.Length == 0)
            return [];
        var span = normalized.AsSpan();

        // Splits into characters (user-defined pieces as frozen single symbols).
        var symbols = new List<Symbol>(normalized.Length);
        for (int i = 0; i < normalized.Length;)
        {
            int length = 0;
            bool freeze = false;
            foreach (var user in _userDefined)
                if (span[i..].StartsWith(user, StringComparison.Ordinal))
                {
                    length = user.Length;
                    freeze = true;
                    break;
                }
            if (length == 0)
                length = char.IsHighSurrogate(span[i]) && i + 1 < span.Length && char.IsLowSurrogate(span[i + 1]) ? 2 : 1;
            symbols.Add(new Symbol { Prev = symbols.Count - 1, Next = i + length < normalized.Length ? symbols.Count + 1 : -1, Start = i, Length = length, Freeze = freeze });
            i += length;
        }
        var s = symbols.ToArray();

        var agenda = new PriorityQueue<(int Left, int Right, int Length), (float Score, int Left)>(AgendaOrder.Instance);
        Dictionary<string, (string Left, string Right)>? reverseMerge = null;

        void MaybeAdd(int left, int right)
        {
            if (left == -1 || right == -1 || s[left].Freeze || s[right].Freeze)
                return;
            int length = s[left].Length + s[right].Length;
            var piece = normalized.AsSpan(s[left].Start, length);
            if (!_piecesBySpan.TryGetValue(piece, out var info))
                return;
            agenda.Enqueue((left, right, length), (info.Score, left));
            if (info.Unused)
            {
                reverseMerge ??= new(StringComparer.Ordinal);
                reverseMerge[piece.ToString()] = (normalized.Substring(s[left].Start, s[left].Length), normalized.Substring(s[right].Start, s[right].Length));
            }
        }

        for (int i = 1; i < s.Length; i++)
            MaybeAdd(i - 1, i);
        while (agenda.TryDequeue(out var top, out _))
        {
            if (s[top.Left].Length == 0 || s[top.Right].Length == 0 || s[top.Left].Length + s[top.Right].Length != top.Length)
                continue; // stale
            s[top.Left].Length = top.Length;
            s[top.Left].Next = s[top.Right].Next;
            if (s[top.Right].Next >= 0)
                s[s[top.Right].Next].Prev = top.Left;
            s[top.Right].Length = 0;
            MaybeAdd(s[top.Left].Prev, top.Left);
            MaybeAdd(top.Left, s[top.Left].Next);
        }

        var ids = new List<int>(s.Length);
        for (int i = 0; i != -1; i = s[i].Next)
            Resegment(span.Slice(s[i].Start, s[i].Length));
        return [.. ids];

        void Resegment(ReadOnlySpan<char> piece)
        {
            if (_reservedBySpan.TryGetValue(piece, out int reserved))
            {
                Emit(piece, reserved);
                return;
            }
            if (!_piecesBySpan.TryGetValue(piece, out var info))
            {
                Emit(piece, UnknownId);
                return;
            }
            if (info.Unused && reverseMerge is not null && reverseMerge.GetAlternateLookup<ReadOnlySpan<char>>().TryGetValue(piece, out var parts))
            {
                Resegment(parts.Left);
                Resegment(parts.Right);
                return;
            }
            Emit(piece, info.Id);
        }

        void Emit(ReadOnlySpan<char> piece, int id)
        {
            if (id != UnknownId || !ByteFallback)
            {
                ids.Add(id);
                return;
            }
            // Byte fallback: the piece's UTF-8 bytes as <0xXX> pieces.
            Span<byte> buffer = stackalloc byte[Encoding.UTF8.GetMaxByteCount(piece.Length)];
            int n = Encoding.UTF8.GetBytes(piece, buffer);
            foreach (byte b in buffer[..n])
                ids.Add(_byteIds[b]);
        }
    }

    /// <summary>Just enough of the protobuf wire format for sentencepiece_model.proto.</summary>
    private ref struct ProtoReader(ReadOnlySpan<byte> data)
    {
        private readonly ReadOnlySpan<byte> _data = data;
        private int _position;

        public bool Next(out int field, out int wire)
        {
            if (_position >= _data.Length)
            {
                field = wire = 0;
                return false;
            }
            ulong key = Varint();
            field = (int)(key >> 3);
            wire = (int)(key & 7);
            return true;
        }

        public ulong Varint()
        {
            ulong value = 0;
            for (int shift = 0; ; shift += 7)
            {
                if (shift > 63)
                    throw new IndexOutOfRangeException("varint too long");
                byte b = _data[_position++];
                value |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80)
                    return value;
            }
        }

        public ReadOnlySpan<byte> Bytes()
        {
            int length = checked((int)Varint());
            var bytes = _data.Slice(_position, length);
            _position += length;
            return bytes;
        }

        public float Float()
        {
            float value = BinaryPrimitives.ReadSingleLittleEndian(_data.Slice(_position, 4));
            _position += 4;
            return value;
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: Varint(); break;
                case 1: _position += 8; break;
                case 2: Bytes(); break;
                case 5: _position += 4; break;
                default: throw new IndexOutOfRangeException($"unsupported protobuf wire type {wire}");
            }
        }
    }
}
