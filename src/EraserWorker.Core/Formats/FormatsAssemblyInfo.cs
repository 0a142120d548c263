using System.Runtime.CompilerServices;

// The Formats tests compare the vectorised conversions with their scalar reference paths.
[assembly: InternalsVisibleTo("EraserWorker.Core.Tests")]
