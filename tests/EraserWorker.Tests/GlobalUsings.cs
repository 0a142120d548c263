// The storage layer's rooms, as the tests of the store's layout and protocols use them.
global using EraserWorker.Storage.Blobs;
global using EraserWorker.Storage.Layout;
global using EraserWorker.Storage.Manifests;
global using EraserWorker.Storage.Versions;
global using EraserWorker.Contracts;
