using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using EraserWorker.Core.Formats.Safetensors;
using Microsoft.Win32.SafeHandles;

namespace EraserWorker.Core.Formats.GradientCaches;

/// <summary>One shard being written: its file names, its reserved header, its two buffered regions, and how it is finished.</summary>
public sealed partial class GradientCacheWriter
{
    private static string ShardFile(int index) => $"shard-{index:D5}.safetensors";

    private static string IdsFile(int index) => $"shard-{index:D5}.ids";

    private long DataStart => 8 + _reservedHeader;

    /// <summary>The shard header for <paramref name="rows"/> rows, padded to the reserved length.</summary>
    private byte[] ShardHeader(int rows)
    {
        long bytes = rows * _rowBytes;
        var entries = new List<SafetensorsEntry>
        {
            new("gradients", StorageDType, [rows, ParameterCount], 0, bytes),
        };
        if (HasCurvature)
            entries.Add(new SafetensorsEntry("curvature", StorageDType, [rows, ParameterCount], bytes, 2 * bytes));
        return SafetensorsWriter.BuildHeader(entries, metadata: null, minimumLength: _reservedHeader);
    }

    private void FinishShard()
    {
        var shard = _current!;
        int rows = shard.Ids.Count;
        shard.Gradients.Flush();
        shard.Curvature?.Flush();
        long used = rows * _rowBytes;
        var handle = shard.Handle;
        if (HasCurvature && rows < _rowsPerShard)
        {
            // Move the curvature rows down to follow the gradients (forward copy: destination < source).
            byte[] buffer = ArrayPool<byte>.Shared.Rent(BufferBytes);
            try
            {
                long from = DataStart + _rowsPerShard * _rowBytes, to = DataStart + used;
                for (long done = 0; done < used; done += BufferBytes)
                {
                    var chunk = buffer.AsSpan(0, (int)Math.Min(BufferBytes, used - done));
                    FileRead.ReadExactly(handle, chunk, from + done, shard.FileName);
                    RandomAccess.Write(handle, chunk, to + done);
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }
        RandomAccess.SetLength(handle, DataStart + (HasCurvature ? 2 : 1) * used);

        byte[] header = ShardHeader(rows);
        if (header.Length != _reservedHeader)
            throw new InvalidOperationException("Shard header outgrew its reservation.");
        byte[] prefix = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
        RandomAccess.Write(handle, prefix, 0);
        RandomAccess.Write(handle, header, 8);
        RandomAccess.FlushToDisk(handle);

        var idsText = new StringBuilder();
        foreach (string id in shard.Ids)
            idsText.Append(id).Append('\n');
        using (var ids = new FileStream(Path.Combine(_temporary, shard.IdsName), FileMode.CreateNew, FileAccess.Write))
        {
            ids.Write(new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true).GetBytes(idsText.ToString()));
            ids.Flush(flushToDisk: true);
        }

        _finished.Add(new ShardRef(shard.FileName, shard.IdsName));
        shard.Dispose();
        _current = null;
    }

    private sealed class ShardWriter : IDisposable
    {
        public ShardWriter(GradientCacheWriter owner, int index)
        {
            FileName = ShardFile(index);
            IdsName = IdsFile(index);
            Handle = File.OpenHandle(Path.Combine(owner._temporary, FileName), FileMode.CreateNew, FileAccess.ReadWrite);
            Gradients = new RegionWriter(Handle, owner.DataStart);
            if (owner.HasCurvature)
                Curvature = new RegionWriter(Handle, owner.DataStart + owner._rowsPerShard * owner._rowBytes);
        }

        public string FileName { get; }

        public string IdsName { get; }

        public SafeFileHandle Handle { get; }

        public RegionWriter Gradients { get; }

        public RegionWriter? Curvature { get; }

        public List<string> Ids { get; } = [];

        public void Dispose()
        {
            Gradients.Dispose();
            Curvature?.Dispose();
            Handle.Dispose();
        }
    }

    /// <summary>Buffered sequential writes at increasing file offsets through a shared handle.</summary>
    private sealed class RegionWriter(SafeFileHandle handle, long start) : IDisposable
    {
        private byte[]? _buffer = ArrayPool<byte>.Shared.Rent(BufferBytes);
        private long _next = start;
        private int _used;

        private byte[] Buffer => _buffer ?? throw new ObjectDisposedException(nameof(RegionWriter));

        public int FreeBytes => BufferBytes - _used;

        public Span<byte> Free => Buffer.AsSpan(_used, BufferBytes - _used);

        public void Advance(int bytes) => _used += bytes;

        public void Flush()
        {
            if (_used == 0)
                return;
            RandomAccess.Write(handle, Buffer.AsSpan(0, _used), _next);
            _next += _used;
            _used = 0;
        }

        public void Dispose()
        {
            if (_buffer is not null)
                ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = null;
        }
    }
}
