// The store's rooms, as the CLI tests set up and inspect stores with them.
global using EraserWorker.Storage.Blobs;
global using EraserWorker.Storage.Layout;
global using EraserWorker.Storage.Manifests;
global using EraserWorker.Storage.Versions;
